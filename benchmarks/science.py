"""Science harness (issue 17): choose the Meta-State readings by experiment, with error bars.

Byte-level models (vocabulary 256, so the embedding is a small part of every model and the loss is
bits per byte directly) of each variant are trained for the same number of bytes on the same data
order, for several seeds, and scored on the whole validation split. The table gives mean +- std
over seeds and, per seed, the paired difference against rwkv7 and against the metastate default.

Equal non-embedding parameters: the metastate models have `--layers` layers; rwkv7 and the
transformer have half as many (a ChannelMix/SwiGLU holds about 8C^2 against the Meta-State layer's
C^2, the model/presets.py pattern), with `ffn_dim` solved so their non-embedding count matches;
the "more state" variant (C_s > C) is the narrower residual width and state width that holds the
most state heads within 5% of the same count. Counts are printed and recorded.

Every (variant, seed) result is appended to OUT/results.jsonl as soon as it finishes; a rerun
with the same settings skips finished runs (an interrupted run resumes), and OUT/table.md is
rewritten after every run.

    python benchmarks/science.py --quick                          # smoke test, about a minute
    python benchmarks/science.py --out runs/science            # the recorded CPU table
    python benchmarks/science.py --scale 20 --device cuda --out runs/science-gpu
"""

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.paper_table import matched_ffn_dim  # noqa: E402
from data_pipeline.jsonl_reader import expand_paths, iter_documents  # noqa: E402
from data_pipeline.stats import StreamStats  # noqa: E402
from evals.heldout import evaluate_documents  # noqa: E402
from model import ModelConfig, build_model, model_size  # noqa: E402
from model.config import state_width  # noqa: E402
from ops import OpsConfig  # noqa: E402
from training.config import OptimConfig  # noqa: E402
from training.engines import build_optimizer  # noqa: E402
from training.schedule import build_lr_scheduler  # noqa: E402

BYTE_VOCAB = 256
SEPARATOR = 0              # byte 0 ends every document (evals.heldout's EOS_ID is 0 too)
DEFAULT_LABEL = "metastate"
WIDE_LABEL = "metastate C_s>C"
# label -> (family, ModelConfig overrides); the metastate default is z_norm=l2, sse=state,
# meta_shift=True, meta_decay=shared, meta_out_lr_mult=1
VARIANTS = {
    "transformer": ("transformer", {}),
    "rwkv7": ("rwkv7", {}),
    DEFAULT_LABEL: ("metastate", {}),
    "metastate z_norm=rms": ("metastate", {"z_norm": "rms"}),
    "metastate z_norm=none": ("metastate", {"z_norm": "none"}),
    "metastate sse=learned": ("metastate", {"sse": "learned"}),
    "metastate meta_shift=false": ("metastate", {"meta_shift": False}),
    "metastate meta_decay=own": ("metastate", {"meta_decay": "own"}),
    "metastate meta_out_lr_mult=0.2": ("metastate", {"meta_out_lr_mult": 0.2}),
    WIDE_LABEL: ("metastate", {}),
}
TABLE_VARIANTS = list(VARIANTS)      # the recorded table; the labels below are follow-ups
VARIANTS["metastate sse=learned meta_shift=false"] = ("metastate", {"sse": "learned",
                                                                    "meta_shift": False})
QUICK = {"steps": 6, "batch": 2, "seq_len": 32, "d_model": 64, "layers": 2, "head_size": 32,
         "seeds": 2, "eval_bytes": 3000}


def load_bytes(paths: list[str], max_bytes: int = 0) -> list[bytes]:
    """UTF-8 bytes of each document of the shards, in file order (at most max_bytes if > 0)."""
    documents, total, stats = [], 0, StreamStats()
    for path in paths:
        for document in iter_documents(path, stats):
            # a NUL byte would read as the document separator
            data = document.text.replace("\x00", "").encode("utf-8")
            if max_bytes and total + len(data) > max_bytes:
                documents.append(data[:max_bytes - total])
                return documents
            documents.append(data)
            total += len(data)
    return documents


def byte_stream(documents: list[bytes]) -> np.ndarray:
    """The documents as one uint8 array, each followed by the separator byte."""
    return np.frombuffer(b"".join(d + bytes([SEPARATOR]) for d in documents), dtype=np.uint8)


def batch_offsets(n_bytes: int, steps: int, batch: int, seq_len: int, seed: int) -> np.ndarray:
    """[steps, batch] window starts drawn uniformly over the stream: a pure function of the seed,
    so every variant sees the same bytes in the same order for one seed."""
    return np.random.default_rng(seed).integers(0, n_bytes - seq_len - 1, size=(steps, batch))


def base_config(args) -> ModelConfig:
    return ModelConfig(family="metastate", vocab_size=BYTE_VOCAB, n_layer=args.layers,
                       d_model=args.d_model, head_size=args.head_size)


def non_embedding(cfg: ModelConfig) -> int:
    return model_size(cfg).non_embedding_params


def wider_state_config(base: ModelConfig) -> ModelConfig:
    """C_s > C at equal non-embedding parameters: among residual widths C' in [C/2, C), state
    widths C_s in (C, 4C] and depths up to 2L, the one with the most state heads in total whose
    count is within 5% of the base model's (ties: the closest count)."""
    target, N = non_embedding(base), base.head_size
    best = None
    for width in range(max(N, base.d_model // 2 // N * N), base.d_model, N):
        for state in range(base.d_model + N, 4 * base.d_model + 1, N):
            for layers in range(1, 2 * base.n_layer + 1):
                cfg = dataclasses.replace(base, d_model=width, d_state=state, n_layer=layers)
                gap = abs(non_embedding(cfg) / target - 1)
                key = (state // N * layers, -gap)
                if gap <= 0.05 and (best is None or key > best[0]):
                    best = (key, cfg)
    if best is None or best[0][0] <= state_width(base) // N * base.n_layer:
        raise SystemExit(f"science: no C_s > C model with more state than the base fits within 5% "
                         f"of {target:,} parameters; use a larger --d-model")
    return best[1]


def variant_config(args, label: str) -> ModelConfig:
    family, overrides = VARIANTS[label]
    base = base_config(args)
    if label == WIDE_LABEL:
        return wider_state_config(base)
    if family == "metastate":
        return dataclasses.replace(base, **overrides)
    if args.layers % 2:
        raise SystemExit(f"science: --layers {args.layers} must be even (rwkv7 and the transformer "
                         f"get half as many layers as metastate)")
    half = dataclasses.replace(base, n_layer=args.layers // 2)
    return dataclasses.replace(half, family=family,
                               ffn_dim=matched_ffn_dim(half, family, non_embedding(base), multiple=16))


def signature(args) -> dict:
    """The settings a recorded result depends on; a rerun reuses only rows with the same ones."""
    keys = ("steps", "batch", "seq_len", "d_model", "layers", "head_size", "lr", "eval_bytes",
            "corpus", "device")
    return {k: getattr(args, k) for k in keys}


def train_one(cfg: ModelConfig, args, stream: np.ndarray, seed: int, log) -> dict:
    """Train one model from seed `seed` with the project's optimizer groups and lr schedule."""
    device = torch.device(args.device)
    torch.manual_seed(seed)
    model = build_model(cfg, OpsConfig(backend="chunked" if device.type == "cpu" else "auto",
                                       chunk_size=16),
                        device=device)
    optim_cfg = OptimConfig(lr=args.lr, warmup_steps=max(1, args.steps // 10))
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_lr_scheduler(optimizer, optim_cfg.warmup_steps, args.steps,
                                   optim_cfg.min_lr_ratio)
    offsets = batch_offsets(len(stream), args.steps, args.batch, args.seq_len, seed)
    window = np.arange(args.seq_len + 1)
    losses, grad_norms, started = [], [], time.perf_counter()
    for step in range(args.steps):
        tokens = torch.from_numpy(stream[offsets[step][:, None] + window].astype(np.int64)).to(device)
        loss, _ = model(tokens[:, :-1], targets=tokens[:, 1:])
        loss.backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                               optim_cfg.grad_clip)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            log(f"non-finite loss at step {step}; stopping this run")
            break
        if (step + 1) % max(1, args.steps // 10) == 0 or step + 1 == args.steps:
            elapsed = time.perf_counter() - started
            log(f"step {step + 1}/{args.steps} loss {statistics.fmean(losses[-10:]):.4f} "
                f"grad-norm {grad_norms[-1]:.2f} {elapsed / (step + 1):.3f} s/step")
    return {"model": model, "train_s": time.perf_counter() - started,
            "final_train_loss": statistics.fmean(losses[-max(1, args.steps // 10):]),
            "grad_norm_median": statistics.median(grad_norms), "grad_norm_max": max(grad_norms)}


def val_windows(documents: list[bytes], length: int) -> list[dict]:
    """The whole val split cut into consecutive windows of `length` bytes, each scored from a
    fresh state after a separator: every family sees the same 0..length-1 bytes of context, the
    training length (a RoPE transformer scored past it would be measured out of distribution).
    n_bytes counts text bytes only, so bits per byte = all nats (separators included) / text."""
    stream = byte_stream(documents)
    pieces = [stream[i:i + length] for i in range(0, len(stream), length)]
    return [{"tokens": torch.from_numpy(p.astype(np.int64)), "pile_set_name": "val",
             "n_bytes": int((p != SEPARATOR).sum())} for p in pieces]


def evaluate_bpb(model, windows: list[dict], batch_size: int) -> dict:
    started = time.perf_counter()
    overall = evaluate_documents(model, windows, context=windows[0]["tokens"].numel(),
                                 batch_size=batch_size).overall.summary()
    return {"bits_per_byte": overall["bits_per_byte"], "val_loss": overall["loss"],
            "val_bytes": overall["bytes"], "eval_s": time.perf_counter() - started}


def read_results(path: Path, sig: dict) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("signature") == sig]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_difference(rows: list[dict], label: str, reference: str) -> str:
    """Mean +- std over seeds of bpb(label) - bpb(reference), seed by seed (same data order)."""
    by_seed = {(r["label"], r["seed"]): r["bits_per_byte"] for r in rows}
    diffs = [by_seed[(label, s)] - by_seed[(reference, s)] for (name, s) in by_seed
             if name == label and (reference, s) in by_seed]
    if not diffs or label == reference:
        return "-"
    mean, std = mean_std(diffs)
    return f"{mean:+.4f} ± {std:.4f}"


def markdown_table(rows: list[dict], labels: list[str]) -> str:
    lines = ["| variant | non-emb params | total params | state heads | train bytes | seeds | "
             "val bpb (mean ± std) | paired Δ vs rwkv7 | paired Δ vs metastate | train s/run | "
             "eval s/run | median grad-norm |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        if not mine:
            continue
        first = mine[0]
        bpb, bpb_std = mean_std([r["bits_per_byte"] for r in mine])
        lines.append(
            f"| {label} | {first['non_embedding']:,} | {first['total_params']:,} | "
            f"{first['state_heads']} | {first['train_bytes']:,} | {len(mine)} | "
            f"{bpb:.4f} ± {bpb_std:.4f} | {paired_difference(rows, label, 'rwkv7')} | "
            f"{paired_difference(rows, label, DEFAULT_LABEL)} | "
            f"{statistics.fmean(r['train_s'] for r in mine):.0f} | "
            f"{statistics.fmean(r['eval_s'] for r in mine):.0f} | "
            f"{statistics.fmean(r['grad_norm_median'] for r in mine):.2f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "corpus"),
                        help="Pile-layout corpus with train/*.jsonl.zst and val.jsonl.zst")
    parser.add_argument("--out", default="runs/science", help="results.jsonl and table.md go here")
    parser.add_argument("--variants", default=",".join(TABLE_VARIANTS),
                        help="comma-separated labels (default: all but the last): "
                        + ", ".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (>= 3 for error bars)")
    parser.add_argument("--steps", type=int, default=128, help="optimizer steps (before --scale)")
    parser.add_argument("--scale", type=int, default=1,
                        help="multiply the steps (so the training bytes) by this, e.g. 20 on a GPU")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=128, help="bytes per training sequence")
    parser.add_argument("--d-model", type=int, default=64, help="residual width C")
    parser.add_argument("--layers", type=int, default=4,
                        help="metastate depth (rwkv7 and the transformer get half)")
    parser.add_argument("--head-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-batch", type=int, default=64, help="val windows per forward pass")
    parser.add_argument("--eval-bytes", type=int, default=0,
                        help="score only the first N val bytes (0 = the whole val split)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--plan", action="store_true",
                        help="print each variant's shape and parameter count, then exit")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny models, 6 steps, 2 seeds, 3 kB of val (explicit flags win)")
    args = parser.parse_args(argv)
    if args.quick:    # the smoke sizes, except where a flag was given explicitly
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    args.steps *= args.scale
    return args


def check_args(args) -> str | None:
    """A one-line complaint about the arguments, or None."""
    corpus = Path(args.corpus)
    if not (corpus / "val.jsonl.zst").is_file() or not (corpus / "train").is_dir():
        return f"--corpus {corpus} has no train/ and val.jsonl.zst; pass a Pile-layout corpus"
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        return f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}"
    if args.seeds < 1 or args.steps < 1 or args.scale < 1:
        return "--seeds, --steps and --scale must be >= 1"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return f"--device {args.device}: no CUDA device here; use --device cpu"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"science: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path, table_path = out / "results.jsonl", out / "table.md"
    labels = args.variants.split(",")
    sig = signature(args)
    rows = read_results(results_path, sig)
    done = {(r["label"], r["seed"]) for r in rows}
    todo = [(label, seed) for seed in range(args.seeds) for label in labels
            if (label, seed) not in done]
    configs = {label: variant_config(args, label) for label in labels}
    for label, cfg in configs.items():
        print(f"science: {label:32s} layers {cfg.n_layer} C {cfg.d_model} C_s {state_width(cfg)} "
              f"ffn {cfg.ffn_dim or '-'} non-embedding {non_embedding(cfg):,}", flush=True)
    if args.plan:
        return 0
    print(f"science: {len(done)} finished runs reused, {len(todo)} to go; "
          f"{args.steps} steps x {args.batch} x {args.seq_len} bytes each", flush=True)
    if todo:
        corpus = Path(args.corpus)
        stream = byte_stream(load_bytes(expand_paths(corpus / "train", what="--corpus train")))
        val = load_bytes([str(corpus / "val.jsonl.zst")], args.eval_bytes)
        windows = val_windows(val, args.seq_len)
        print(f"science: {len(stream):,} training bytes, {sum(map(len, val)):,} val bytes "
              f"in {len(val)} documents, {len(windows)} eval windows", flush=True)
    started = time.perf_counter()
    for index, (label, seed) in enumerate(todo):
        cfg = configs[label]

        def log(message, label=label, seed=seed, index=index):
            elapsed = time.perf_counter() - started
            print(f"[{index + 1}/{len(todo)} {label} seed {seed} | {elapsed:.0f} s] {message}",
                  flush=True)

        trained = train_one(cfg, args, stream, seed, log)
        scores = evaluate_bpb(trained.pop("model"), windows, args.eval_batch)
        log(f"val {scores['bits_per_byte']:.4f} bpb (train {trained['train_s']:.0f} s, "
            f"eval {scores['eval_s']:.0f} s)")
        size = model_size(cfg)
        row = {"label": label, "seed": seed, **trained, **scores,
               "non_embedding": size.non_embedding_params, "total_params": size.total_params,
               "state_heads": 0 if cfg.family == "transformer" else
               state_width(cfg) // cfg.head_size * cfg.n_layer,
               "train_bytes": args.steps * args.batch * args.seq_len,
               "model": dataclasses.asdict(cfg), "threads": torch.get_num_threads(),
               "loadavg": os.getloadavg()[0], "signature": sig}
        with results_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        rows.append(row)
        table_path.write_text(markdown_table(rows, labels))
    table_path.write_text(markdown_table(rows, labels))
    print(table_path.read_text(), flush=True)
    return 0 if all(math.isfinite(r["bits_per_byte"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
