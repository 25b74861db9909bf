"""Progressive scaling vs training from scratch, at small scale (the paper's experiment, CPU).

Three runs on real text (../shared/data/corpus, GPT-NeoX tokens), same batches, same tokens:

- `scratch`      the large model trained from scratch for N + M steps;
- `progressive`  the small model trained for N steps, `metastate expand`-ed into the large one,
                 then trained for M more steps (lr re-warm over `--rewarm` steps);
- `progressive-frozen`  the same with `--freeze-old` (only new entries train after N).

Small and large runs share one schedule (warm-up + cosine over N + M steps; the small run stops
after N with `train.stop_after`). Models are tiny (d_model 64, head 32; small: 2 layers x 2 state
heads, large: 3 layers x 4 state heads, W_in) with the real 50304 vocabulary, so the embedding and
head dominate the parameter count. Compute = sum over steps of the model's training FLOPs per token
(model/size.py: 6 x matmul params + the recurrences) x tokens. Printed: final train loss (mean of
the last 10 steps), validation loss at the end, training PFLOPs, wall time; a PNG of the loss
curves is written. Numbers only; nothing asserted.

    python benchmarks/expand_bench.py                            # N = M = 150 (~5-10 min, 2 cores)
    python benchmarks/expand_bench.py --small-steps 40 --large-steps 40 --png /tmp/expand.png
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from launch.expansion import expand_checkpoint  # noqa: E402
from launch.run_config import load_run_config  # noqa: E402
from model import model_size  # noqa: E402
from training.distributed import DistEnv  # noqa: E402
from training.monitors import MetricsLog  # noqa: E402
from training.trainer import Trainer  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "corpus"
CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
SMALL = ["model.n_layer=2", "model.d_state=0"]
LARGE = ["model.n_layer=3", "model.d_state=128"]


def common(args, total_steps: int, out_dir: Path) -> list[str]:
    return ["model.d_model=64", "model.head_size=32", f"data.seq_len={args.seq_len}",
            f"data.train_path={CORPUS / 'train' / '*.jsonl.zst'}",
            f"data.val_path={CORPUS / 'val.jsonl.zst'}",
            f"train.micro_batch_size={args.batch}", f"train.global_batch_size={args.batch}",
            f"train.steps={total_steps}", f"train.eval_every={total_steps}",
            f"train.eval_batches={args.eval_batches}", "train.log_every=10", "train.dtype=fp32",
            f"optim.lr={args.lr}", f"optim.warmup_steps={args.warmup}",
            f"optim.rewarm_steps={args.rewarm}", "checkpoint.every=0", "checkpoint.keep_last=0",
            "tracking.backend=none", f"train.out_dir={out_dir}"]


def train(config, overrides) -> tuple[Trainer, float]:
    cfg = load_run_config(config, overrides)
    start = time.perf_counter()
    trainer = Trainer(cfg, CPU)
    trainer.run()
    return trainer, time.perf_counter() - start


def flops_per_step(overrides, args) -> float:
    cfg = load_run_config("smoke", overrides)
    return model_size(cfg.model, args.seq_len).train_flops * args.batch * args.seq_len


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-steps", type=int, default=150, help="N: steps of the small model")
    parser.add_argument("--large-steps", type=int, default=150, help="M: steps after expansion")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rewarm", type=int, default=10)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--png", default=str(ROOT / "benchmarks" / "expand_bench.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    N, M = args.small_steps, args.large_steps
    work = Path(tempfile.mkdtemp(prefix="expand_bench_"))
    results, curves = {}, {}
    try:
        scratch, wall = train("smoke", [*common(args, N + M, work / "scratch"), *LARGE])
        curves["scratch"] = MetricsLog.read(work / "scratch" / "metrics.jsonl")
        results["scratch"] = (scratch.last_val_loss, (N + M) * flops_per_step(LARGE, args), wall)

        small, small_wall = train("smoke", [*common(args, N + M, work / "small"), *SMALL,
                                            f"train.stop_after={N}"])
        small_flops = N * flops_per_step(SMALL, args)
        large_cfg = work / "large.yaml"
        large_cfg.write_text((work / "scratch" / "config.yaml").read_text())
        for name, freeze in (("progressive", False), ("progressive-frozen", True)):
            start = time.perf_counter()
            expand_checkpoint(work / "small", str(large_cfg), work / name, freeze_old=freeze)
            grown, _ = train(work / name / "config.yaml", [])
            wall = time.perf_counter() - start  # the expansion's own time counts
            rows = MetricsLog.read(work / "small" / "metrics.jsonl")
            rows.update(MetricsLog.read(work / name / "metrics.jsonl"))
            curves[name] = rows
            results[name] = (grown.last_val_loss, small_flops + M * flops_per_step(LARGE, args),
                             small_wall + wall)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    tokens = args.batch * args.seq_len
    print(f"N={N} small steps, M={M} steps after expansion; batch {args.batch} x {args.seq_len} "
          f"tokens = {tokens} tokens/step, {(N + M) * tokens:,} tokens per run")
    print(f"{'run':<20} {'final train loss':>16} {'val loss':>9} {'train PFLOP':>12} "
          f"{'vs scratch':>10} {'wall s':>8}")
    for name, (val, flops, wall) in results.items():
        rows = curves[name]
        last = [rows[s]["loss"] for s in sorted(rows)[-10:]]
        print(f"{name:<20} {sum(last) / len(last):>16.4f} {val:>9.4f} {flops / 1e15:>12.4f} "
              f"{flops / results['scratch'][1]:>9.2f}x {wall:>8.1f}")
    plot(curves, N, args.png)
    print(f"plot: {args.png}")


def plot(curves: dict, expansion_step: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in curves.items():
        steps = sorted(rows)
        losses = [rows[s]["loss"] for s in steps]
        windows = [losses[max(0, i - 9): i + 1] for i in range(len(losses))]
        smooth = [sum(w) / len(w) for w in windows]
        ax.plot(steps, smooth, label=name)
    ax.axvline(expansion_step, color="grey", linestyle=":", label="expansion")
    ax.set_xlabel("optimizer step (same tokens per step)")
    ax.set_ylabel("train loss (10-step mean, nats)")
    ax.set_title("Progressive state expansion vs training from scratch (tiny, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
