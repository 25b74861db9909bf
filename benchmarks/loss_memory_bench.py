"""Peak memory of the loss: whole-batch fp32 logits vs the fused chunked head + cross-entropy.

At the 150m presets' shape (d_model 768, vocab 50304) each variant runs in a fresh subprocess
and reports the growth of its peak resident set (Linux `VmHWM` minus the `VmRSS` measured just
before the timed work, after the inputs, the weights and a warm-up step exist), so one variant's
freed memory cannot hide the other's peak. Two measurements:

- `loss`: forward + backward of head + cross-entropy alone, from final-norm outputs
  [B*T, 768] (requires grad) and the head weight [50304, 768]: the part this change replaces.
- `step`: a whole fp32 training step (forward, backward, clip, AdamW) of rwkv7-150m's shape with
  `--layers` layers (default 1, so a step takes seconds on 2 cores; the blocks' activations are
  the same for both variants, only the loss part differs).

`plain` is `ops.loss_chunk_size=0` (logits [B*T, V] materialised, then F.cross_entropy);
`chunked` is the default 1024 tokens per chunk (`--chunk`).

    python benchmarks/loss_memory_bench.py                     # B=2, T=4096: the Markdown table
    python benchmarks/loss_memory_bench.py --batch 1 --seq-len 2048
    python benchmarks/loss_memory_bench.py --one loss 0        # one variant, one JSON line

It prints numbers only; nothing is asserted.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model import build_model, model_preset, parameter_groups  # noqa: E402
from ops import OpsConfig, linear_cross_entropy  # noqa: E402

D_MODEL, VOCAB = 768, 50304
MiB = 2 ** 20


def proc_status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS: now, VmHWM: the peak so far) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def reset_peak() -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0); where that is not
    allowed the peak simply includes the setup, which is measured and subtracted anyway."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def loss_part(batch_tokens: int, chunk: int, steps: int):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch_tokens, D_MODEL, generator=g).requires_grad_()
    weight = torch.nn.Parameter(torch.randn(VOCAB, D_MODEL, generator=g) * 0.02)
    targets = torch.randint(0, VOCAB, (batch_tokens,), generator=g)

    def run():
        hidden.grad = weight.grad = None
        loss = linear_cross_entropy(hidden, weight, targets, chunk)
        loss.backward()
        return loss.item()

    run()                               # warm-up: grads exist afterwards, as in training
    return run, steps


def train_step(batch: int, seq_len: int, layers: int, chunk: int, steps: int):
    torch.manual_seed(0)
    cfg = model_preset("rwkv7-150m", n_layer=layers)
    model = build_model(cfg, OpsConfig(backend="chunked", loss_chunk_size=chunk))
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay=0.1), lr=6e-4)
    tokens = torch.randint(0, VOCAB, (batch, seq_len + 1), generator=torch.Generator().manual_seed(1))

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model(tokens[:, :-1], targets=tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    run()                               # warm-up: AdamW moments exist afterwards
    return run, steps


def measure_one(kind: str, chunk: int, args) -> dict:
    torch.set_num_threads(args.threads)
    if kind == "loss":
        run, steps = loss_part(args.batch * args.seq_len, chunk, args.steps)
    else:
        run, steps = train_step(args.batch, args.seq_len, args.layers, chunk, args.steps)
    baseline = proc_status_bytes("VmRSS")
    reset_peak()
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(run())
        times.append(time.perf_counter() - start)
    peak = proc_status_bytes("VmHWM")
    return {"kind": kind, "chunk": chunk, "baseline_mib": baseline / MiB,
            "peak_growth_mib": (peak - baseline) / MiB, "seconds": min(times), "loss": losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=1, help="layers of the rwkv7-150m step")
    parser.add_argument("--chunk", type=int, default=OpsConfig.loss_chunk_size)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "CHUNK"),
                        help="run one variant in this process (loss|step, chunk) and print JSON")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args)))
        return
    forwarded = ["--batch", str(args.batch), "--seq-len", str(args.seq_len), "--layers",
                 str(args.layers), "--steps", str(args.steps), "--threads", str(args.threads)]
    rows = []
    for kind in ("loss", "step"):
        for chunk in (0, args.chunk):
            out = subprocess.run([sys.executable, __file__, *forwarded, "--one", kind, str(chunk)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    B, T = args.batch, args.seq_len
    print(f"B={B} T={T} d_model={D_MODEL} vocab={VOCAB} fp32, {args.threads} threads; step = "
          f"rwkv7-150m shape with {args.layers} layer(s); peak = VmHWM growth over the setup\n")
    print("| measured | variant | peak MiB | ratio plain/chunked | fastest s | loss |")
    print("|---|---|---:|---:|---:|---:|")
    for plain, chunked in zip(rows[::2], rows[1::2]):
        ratio = plain["peak_growth_mib"] / max(chunked["peak_growth_mib"], 1e-9)
        for row, label in ((plain, "plain logits"), (chunked, f"chunked {chunked['chunk']}")):
            shown = f"{ratio:.1f}x" if row is chunked else ""
            what = "loss fwd+bwd" if row["kind"] == "loss" else "train step"
            print(f"| {what} | {label} | {row['peak_growth_mib']:.0f} | {shown} | "
                  f"{row['seconds']:.2f} | {row['loss']:.6f} |")


if __name__ == "__main__":
    main()
