"""Training throughput and peak memory of the metastate, rwkv7 and transformer families at
(close to) equal parameter count.

One training step = forward + cross-entropy (fused head + loss in chunks, as the trainer)
+ backward + grad-norm clip (1.0, as the trainer)
+ AdamW step (the trainer's parameter groups), fp32, on a random token batch [B, T] (default
B=2, T=1024). Each family runs in its own subprocess, so the peak-memory numbers do not mix:

- `tokens/s`  = B*T / the fastest timed step (after 1 warm-up step). The minimum is the least
  noisy estimate on a shared machine: load from other processes only ever adds time. The
  families run round-robin (`--rounds` subprocesses each), so all of them see the same load.
- `peak MiB`  = peak RSS growth of the subprocess during model build + training steps:
  resource.getrusage(RUSAGE_SELF).ru_maxrss minus the RSS measured just before the model is
  built (after `import torch` and a tiny matmul + backward + AdamW step that takes the
  runtime's one-time allocations out of the count). Weights, grads, AdamW moments and
  activations all count.
- `state KiB` = `ModelState.nbytes()` after a B=1 forward over T tokens: the recurrent state that
  generation carries (constant in T for metastate/rwkv7; the KV cache at T for the transformer).

The tiny presets differ in size (the Meta-State layer has far fewer weights than an FFN), so
metastate gets the overrides in `--metastate-overrides` (default `n_layer=4`, the presets' own
way of matching sizes: more layers) and the table prints each model's parameter count and its
ratio to the transformer's so the reader can check that they match.

    python benchmarks/train_bench.py                       # the table (~1 min on 2 idle cores)
    python benchmarks/train_bench.py --batch 1 --rounds 1  # quicker look
    python benchmarks/train_bench.py --threads 1           # steadier on a busy shared machine
    python benchmarks/train_bench.py --one rwkv7           # one family, prints a JSON line

With another multi-threaded torch process on the same cores, the default 2 threads stall on each
other and steps get 5-20x slower; `--threads 1` stays steady. It prints numbers only; nothing is
asserted.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model import build_model, model_preset, model_size, parameter_groups  # noqa: E402
from ops import OpsConfig  # noqa: E402

FAMILIES = ("metastate", "rwkv7", "transformer")


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; falls back to the peak so far elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024   # Linux reports KiB


def warm_up_runtime() -> None:
    """One tiny matmul + backward + AdamW step, so that the runtime's one-time allocations
    (autograd engine, BLAS/oneDNN buffers) are not counted as the model's memory."""
    w = torch.nn.Parameter(torch.randn(8, 8))
    opt = torch.optim.AdamW([w])
    (torch.randn(4, 8) @ w).sum().backward()
    opt.step()


def parse_overrides(items) -> dict:
    """["n_layer=4", "d_state=128"] -> {"n_layer": 4, "d_state": 128} (ints where they parse)."""
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"train_bench: override {item!r} must look like key=value")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def family_config(family: str, args):
    overrides = parse_overrides(args.metastate_overrides) if family == "metastate" else {}
    return model_preset(f"{family}-{args.size}", **overrides), overrides


def run_one(family: str, args) -> dict:
    """Build one model, time `args.steps` training steps after 1 warm-up, measure peak RSS."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg, overrides = family_config(family, args)
    warm_up_runtime()
    rss_before = current_rss_bytes()
    model = build_model(cfg, OpsConfig(backend=args.backend))
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay=0.1), lr=6e-4,
                                  betas=(0.9, 0.99), eps=1e-18)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), generator=g)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model(tokens[:, :-1], targets=tokens[:, 1:])   # the trainer's fused chunked loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    step()                                   # warm-up: allocator, AdamW state, first-call costs
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_growth = peak_rss_bytes() - rss_before

    model.eval()
    with torch.no_grad():
        _, state = model(tokens[:1, :-1])
    size = model_size(cfg, seq_len=args.seq_len)
    return {
        "family": family, "overrides": overrides, "params": size.total_params,
        "non_embedding_params": size.non_embedding_params,
        "n_layer": cfg.n_layer, "d_model": cfg.d_model, "d_state": cfg.d_state or cfg.d_model,
        "train_flops_per_token": size.train_flops,
        "step_times": times, "peak_rss_growth": peak_growth, "state_bytes": state.nbytes(),
        "threads": torch.get_num_threads(),
    }


def child_command(family: str, args) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", family,
           "--size", args.size, "--batch", str(args.batch), "--seq-len", str(args.seq_len),
           "--steps", str(args.steps), "--backend", args.backend,
           "--threads", str(args.threads)]
    if args.metastate_overrides:
        cmd += ["--metastate-overrides", *args.metastate_overrides]
    return cmd


def run_all(args) -> None:
    families = args.families
    best: dict[str, dict] = {}
    wall = {f: 0.0 for f in families}
    for _ in range(args.rounds):
        for family in families:           # round-robin: every family sees the same load
            start = time.perf_counter()
            proc = subprocess.run(child_command(family, args), cwd=ROOT, capture_output=True,
                                  text=True)
            wall[family] += time.perf_counter() - start
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"train_bench: the {family} subprocess failed "
                                 f"(exit {proc.returncode})")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            if family not in best:
                best[family] = result
            else:
                best[family]["step_times"] += result["step_times"]
                best[family]["peak_rss_growth"] = max(best[family]["peak_rss_growth"],
                                                      result["peak_rss_growth"])

    tokens = args.batch * args.seq_len
    print(f"Training step (fwd + CE + bwd + clip + AdamW), fp32, B={args.batch} T={args.seq_len}, "
          f"backend={args.backend}, cpu ({best[families[0]]['threads']} threads); fastest of "
          f"{args.rounds}x{args.steps} steps after 1 warm-up per process")
    for family in families:
        r = best[family]
        note = " ".join(f"{k}={v}" for k, v in r["overrides"].items())
        print(f"  {family}-{args.size}{' + ' + note if note else ''}: n_layer={r['n_layer']} "
              f"d_model={r['d_model']} d_state={r['d_state']}")
    ref = best.get("transformer") or best[families[-1]]
    ref_name = ref["family"]
    ref_tps = tokens / min(ref["step_times"])
    header = (f"{'family':<12} {'params':>9} {'vs ' + ref_name[:5]:>9} {'ms/step':>9} "
              f"{'median ms':>10} {'tokens/s':>10} {'tok/s vs ' + ref_name[:5]:>15} "
              f"{'peak MiB':>9} {'peak vs ' + ref_name[:5]:>14} {'state KiB':>10} "
              f"{'train GFLOP/step':>17}")
    print(header)
    for family in families:
        r = best[family]
        fastest = min(r["step_times"])
        median = sorted(r["step_times"])[len(r["step_times"]) // 2]
        tps = tokens / fastest
        state = f"{r['state_bytes'] / 1024:.1f}"
        if family == "transformer":
            state += "*"
        print(f"{family:<12} {r['params']:>9,} {r['params'] / ref['params']:>8.3f}x "
              f"{fastest * 1e3:>9.1f} {median * 1e3:>10.1f} {tps:>10,.0f} "
              f"{tps / ref_tps:>14.2f}x {r['peak_rss_growth'] / 2**20:>9.1f} "
              f"{r['peak_rss_growth'] / ref['peak_rss_growth']:>13.2f}x {state:>10} "
              f"{r['train_flops_per_token'] * tokens / 1e9:>17.3f}")
    print(f"state KiB: ModelState.nbytes() after a B=1 forward over T={args.seq_len} tokens"
          + ("; * = the transformer's KV cache, which grows with T" if "transformer" in families
             else ""))
    print("wall s per family (all rounds, incl. process start and import): "
          + ", ".join(f"{f} {wall[f]:.1f}" for f in families))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", choices=FAMILIES, help="run one family here and print a JSON line")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--size", default="tiny", help="preset size suffix (tiny, 150m, ...)")
    p.add_argument("--metastate-overrides", nargs="*", default=["n_layer=4"],
                   help="ModelConfig fields replaced on the metastate preset to match sizes")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3, help="timed steps per subprocess")
    p.add_argument("--rounds", type=int, default=2, help="subprocesses per family, round-robin")
    p.add_argument("--backend", default="chunked", help="ops backend of the recurrences")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per subprocess; 0 = torch's default (one per core). On a "
                        "busy machine 1 avoids stalls of threads waiting for a descheduled peer")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args)))
    else:
        run_all(args)


if __name__ == "__main__":
    main()
