"""The paper's comparison (arXiv 2504.08247, Table 1) at toy scale on CPU: tiny `metastate`,
`rwkv7` and `transformer` models at equal parameter count trained on equal tokens of real text,
plus the SSE ablation (`model.sse=learned`). Prints held-out loss, bits per byte and the relative
cross-entropy reduction against the transformer (the paper: 7.2-13.1% lower loss at 150M-1.5B on
the Pile).

Equal parameters: every model has the same width, depth and vocabulary (so the same embedding
and head); the rwkv7 and transformer feed-forward widths (`model.ffn_dim`) are solved so their
non-embedding parameter count matches the metastate model's (which has no feed-forward layer).
Equal tokens: the same steps x batch x seq_len for every model, on the same data order.

Size knobs (all explicit): --steps --batch --seq-len --d-model --layers --head-size --lr
--eval-tokens. The defaults are sized for under 30 minutes on a quiet 2-core machine (estimated from
a reduced run, see benchmarks/RESULTS.md); the table prints the wall time and load average.

    python benchmarks/paper_table.py                                # the recorded configuration
    python benchmarks/paper_table.py --steps 10 --eval-tokens 4096  # a quick check
"""

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_pipeline.val_stream import build_val_stream  # noqa: E402
from evals.heldout import evaluate_documents  # noqa: E402
from launch.run_config import load_run_config  # noqa: E402
from model import ModelConfig, model_size  # noqa: E402
from training.distributed import init_distributed  # noqa: E402
from training.trainer import Trainer  # noqa: E402

VARIANTS = [("transformer", "transformer", {}), ("rwkv7", "rwkv7", {}),
            ("metastate", "metastate", {}), ("metastate sse=learned", "metastate", {"sse": "learned"})]


def matched_ffn_dim(base: ModelConfig, family: str, target: int, multiple: int = 32) -> int:
    """The ffn_dim (a multiple of `multiple`) whose non-embedding parameter count is nearest
    `target`; the count is linear in ffn_dim."""
    def params(f):
        return model_size(dataclasses.replace(base, family=family, ffn_dim=f)).non_embedding_params
    slope = (params(2 * multiple) - params(multiple)) / multiple
    exact = multiple + (target - params(multiple)) / slope
    if exact < multiple / 2:
        raise SystemExit(f"{family}: even ffn_dim={multiple} has more parameters than metastate's "
                         f"{target:,}; use a larger --d-model or more --layers")
    return max(multiple, int(round(exact / multiple)) * multiple)


def model_overrides(args, family: str, extra: dict) -> list[str]:
    base = ModelConfig("metastate", n_layer=args.layers, d_model=args.d_model, head_size=args.head_size)
    items = {"family": family, "n_layer": args.layers, "d_model": args.d_model,
             "head_size": args.head_size, **extra}
    if family != "metastate":
        target = model_size(base).non_embedding_params
        items["ffn_dim"] = matched_ffn_dim(base, family, target)
    return [f"model.{k}={v}" for k, v in items.items()]


def run_variant(args, family: str, extra: dict, out_dir: Path) -> dict:
    corpus = Path(args.corpus)
    overrides = model_overrides(args, family, extra) + [
        f"data.train_path={corpus / 'train'}", f"data.val_path={corpus / 'val.jsonl.zst'}",
        f"data.test_path={corpus / 'test.jsonl.zst'}", f"data.seq_len={args.seq_len}",
        f"train.steps={args.steps}", f"train.global_batch_size={args.batch}",
        f"train.micro_batch_size={args.batch}", f"optim.lr={args.lr}",
        f"optim.warmup_steps={max(1, args.steps // 10)}", "train.eval_every=0", "train.dtype=fp32",
        f"train.log_every={max(1, args.steps // 5)}", f"train.out_dir={out_dir}",
        "checkpoint.every=0", "tracking.backend=none", "parallel.backend=none", f"train.seed={args.seed}"]
    cfg = load_run_config("demo", overrides)
    started = time.perf_counter()
    trainer = Trainer(cfg, init_distributed(), config_name="paper_table")
    trainer.run()
    train_s = time.perf_counter() - started
    model = trainer.model.eval()
    started = time.perf_counter()
    result = evaluate_documents(model, build_val_stream(cfg.data, "val", max_tokens=args.eval_tokens),
                                context=args.seq_len, batch_size=4)
    size = model_size(cfg.model)
    return {**result.overall.summary(), "params": size.total_params,
            "non_embedding": size.non_embedding_params, "eval_tokens": result.overall.tokens,
            "tokens": args.steps * args.batch * args.seq_len, "train_s": train_s,
            "eval_s": time.perf_counter() - started}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "corpus"),
                        help="Pile-format corpus with train/, val.jsonl.zst, test.jsonl.zst")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--head-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens scored")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    if not (Path(args.corpus) / "val.jsonl.zst").is_file():
        print(f"paper_table: {args.corpus} has no val.jsonl.zst; pass --corpus DIR", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started, load = time.perf_counter(), os.getloadavg()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="paper-table-") as tmp:
        for label, family, extra in VARIANTS:
            print(f"== {label}", file=sys.stderr, flush=True)
            rows[label] = run_variant(args, family, extra, Path(tmp) / label.replace(" ", "_"))
    reference = rows["transformer"]["loss"]
    print(f"\npaper_table: {args.steps} steps x {args.batch} x {args.seq_len} tokens, d_model "
          f"{args.d_model}, {args.layers} layers, eval {args.eval_tokens} val tokens (corpus {args.corpus})")
    print("| model | params | non-emb params | train tokens | val tokens | val loss | bpb | "
          "CE reduction vs transformer (+ = lower loss) | train s | eval s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in rows.items():
        reduction = (reference - r["loss"]) / reference * 100
        print(f"| {label} | {r['params']:,} | {r['non_embedding']:,} | {r['tokens']:,} | "
              f"{r['eval_tokens']:,} | {r['loss']:.4f} | {r['bits_per_byte']:.4f} | {reduction:+.2f}% | "
              f"{r['train_s']:.0f} | {r['eval_s']:.0f} |")
    end_load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nwall {time.perf_counter() - started:.0f} s; load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, at end {end_load}; {os.cpu_count()} cores")
    if not all(math.isfinite(r["loss"]) for r in rows.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
