"""`metastate eval`, `metastate generate` and `metastate runs compare` (registered through
launch/cli.py COMMAND_MODULES). Heavy imports happen inside the commands."""

import argparse
import codecs
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

from evals.config import EVAL_SPLITS, EvalConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "eval", help="held-out loss, perplexity and bits per byte, overall and per Pile subset",
        description="Score whole held-out documents with a checkpoint: loss, perplexity and "
                    "bits per byte (from the UTF-8 text), overall and per pile_set_name, and the "
                    "loss by token position. Recurrent families carry their state across "
                    "windows; the transformer uses sliding windows.",
        epilog="example: metastate eval runs/demo --split val --max-tokens 65536 --positions-png pos.png")
    ev.add_argument("checkpoint", metavar="CHECKPOINT",
                    help="a step-NNNNNNNN directory, its checkpoints/ folder, a run directory, or a "
                         "safetensors file from `metastate export`")
    ev.add_argument("--data", default=None,
                    help="a jsonl.zst file or glob, or a directory holding val.jsonl.zst and "
                         "test.jsonl.zst (default: the checkpoint's data.val_path/test_path)")
    ev.add_argument("--split", choices=EVAL_SPLITS, default=None, help="held-out split (eval.split)")
    ev.add_argument("--max-tokens", type=int, default=None,
                    help="stop after the document that reaches N tokens; 0 = all (eval.max_tokens)")
    ev.add_argument("--context", type=int, default=None,
                    help="tokens per forward window (eval.context; default the training seq_len)")
    ev.add_argument("--stride", type=int, default=None,
                    help="transformer sliding-window step (eval.stride; default context/2)")
    ev.add_argument("--batch-size", type=int, default=None, help="documents per pass (eval.batch_size)")
    ev.add_argument("--positions-png", default=None, help="write the loss-by-position plot here")
    ev.add_argument("--mlflow", action="store_true",
                    help="log the metrics (step = the checkpoint's step) and the plot to the "
                         "checkpoint's MLflow run")
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(func=eval_command)

    gen = subparsers.add_parser(
        "generate", help="sample a continuation, streaming tokens as they are produced",
        description="Continue a prompt with a checkpoint; tokens are printed as they are "
                    "sampled. Recurrent families keep a constant-size state (constant memory).",
        epilog='example: metastate generate runs/demo --prompt "The meaning of" --max-new-tokens 50 '
               "--temperature 0.8 --top-p 0.9")
    gen.add_argument("checkpoint", metavar="CHECKPOINT", help="as for `metastate eval`")
    gen.add_argument("--prompt", required=True, help="prompt text")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, (0, 1]")
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop-at-eos", action="store_true", help="stop at <|endoftext|>")
    gen.add_argument("--device", default="cpu")
    gen.set_defaults(func=generate_command)

    runs = subparsers.add_parser("runs", help="compare training runs tracked in MLflow")
    commands = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")
    compare = commands.add_parser(
        "compare", help="side-by-side table of runs and a PNG of their loss curves",
        description="Pull runs from MLflow: family, preset, parameters, tokens, final validation "
                    "loss, bits per byte (from `metastate eval --mlflow`) and tokens/s.",
        epilog="example: metastate runs compare --experiment metastate-demo --tracking-uri "
               "http://127.0.0.1:5000 --png curves.png")
    compare.add_argument("runs", metavar="RUN", nargs="*",
                         help="run ids or run names, or run directories (their local MLflow store)")
    compare.add_argument("--experiment", default=None, help="every run of this experiment")
    compare.add_argument("--tracking-uri", default=None,
                         help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    compare.add_argument("--png", default="runs-compare.png", help="loss-curve plot (runs-compare.png)")
    compare.add_argument("--json", action="store_true", help="print the rows as JSON")
    compare.set_defaults(func=compare_command)


# ------------------------------------------------------------------------------------------ eval


def resolve_eval_config(checkpoint_config: dict, args: argparse.Namespace) -> EvalConfig:
    """The checkpoint's `eval` section with the command-line flags on top; context 0 becomes the
    training seq_len. Raises ValueError naming a bad flag."""
    saved = checkpoint_config.get("eval", {})
    names = {f.name for f in fields(EvalConfig)}
    cfg = EvalConfig(**{k: v for k, v in saved.items() if k in names})
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            setattr(cfg, name, value)
    if cfg.context == 0:
        from data_pipeline.config import DataConfig
        cfg.context = checkpoint_config.get("data", {}).get("seq_len", DataConfig.seq_len)
    for flag, value, low in (("--max-tokens", cfg.max_tokens, 0), ("--batch-size", cfg.batch_size, 1),
                             ("--context", cfg.context, 1), ("--stride", cfg.stride, 0)):
        if value < low:
            raise ValueError(f"{flag}={value} must be >= {low}")
    if cfg.stride > cfg.context:
        raise ValueError(f"--stride={cfg.stride} must not exceed --context={cfg.context}")
    return cfg


def eval_data_config(checkpoint_config: dict, data: str | None, split: str):
    """The checkpoint's data section with --data applied (a file/glob, or a directory holding
    `<split>.jsonl.zst`)."""
    from omegaconf import OmegaConf

    from data_pipeline.config import DataConfig

    cfg = OmegaConf.structured(DataConfig)
    saved = {k: v for k, v in checkpoint_config.get("data", {}).items() if k in cfg}
    cfg = OmegaConf.merge(cfg, saved)
    if data is not None:
        path = Path(data)
        if path.is_dir() and (path / f"{split}.jsonl.zst").is_file():
            path = path / f"{split}.jsonl.zst"
        cfg[f"{split}_path"] = str(path)
    return cfg


def eval_command(args: argparse.Namespace) -> int:
    """Example: `metastate eval runs/demo --split test --json`."""
    from tqdm import tqdm

    from data_pipeline.stats import DataError
    from data_pipeline.val_stream import build_val_stream
    from evals.checkpoint import load_for_eval
    from evals.heldout import evaluate_documents
    from evals.report import plot_positions, position_table, subset_table
    from training.checkpointing import CheckpointError

    try:
        loaded = load_for_eval(args.checkpoint, args.device)
        cfg = resolve_eval_config(loaded.config, args)
        data_cfg = eval_data_config(loaded.config, args.data, cfg.split)
        stream = build_val_stream(data_cfg, cfg.split, max_tokens=cfg.max_tokens)
        with tqdm(total=cfg.max_tokens or None, unit="tok", desc=f"eval {cfg.split}",
                  disable=args.no_progress or None, file=sys.stderr) as bar:
            result = evaluate_documents(loaded.model, stream, cfg.context, cfg.stride,
                                        cfg.batch_size, progress=bar)
    except (CheckpointError, DataError, ValueError, FileNotFoundError) as err:
        print(f"eval: {err}", file=sys.stderr)
        return 2
    summary = {"checkpoint": str(loaded.path), "step": loaded.step, "family": loaded.model.cfg.family,
               "split": cfg.split, "data": data_cfg[f"{cfg.split}_path"], "context": cfg.context,
               "stride": (cfg.stride or max(1, cfg.context // 2)) if loaded.model.cfg.family == "transformer"
               else None, **result.as_dict(cfg.context)}
    png = plot_positions(result.positions.buckets(cfg.context, per_octave=4), cfg.context,
                         args.positions_png, f"{loaded.path.name} ({summary['family']})") \
        if args.positions_png else None
    if args.mlflow:
        try:
            log_eval_to_mlflow(loaded, summary, png)
        except ValueError as err:
            print(f"eval: {err}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['checkpoint']}  step {summary['step']}  {summary['family']}  split {cfg.split}  "
          f"context {cfg.context}")
    print(subset_table(summary))
    print()
    print(position_table(summary["positions"], cfg.context))
    if png:
        print(f"plot: {png}")
    return 0


def log_eval_to_mlflow(loaded, summary: dict, png: Path | None) -> None:
    """Metrics at the checkpoint's step, plus the summary JSON and the plot, into the run that
    wrote the checkpoint (its manifest's mlflow_run_id, in its tracking store)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from evals.report import eval_metrics
    from training.tracking import default_tracking_uri

    tracking = loaded.config.get("tracking", {})
    if loaded.run_dir is None or not loaded.mlflow_run_id or tracking.get("backend") != "mlflow":
        raise ValueError(f"--mlflow: {loaded.path} names no MLflow run (a safetensors file, or a run "
                         "trained with tracking.backend=none); drop --mlflow or eval the run's checkpoint")
    uri = tracking.get("uri") or default_tracking_uri(loaded.run_dir)
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    metrics = [Metric(name, float(value), now, loaded.step)
               for name, value in eval_metrics(summary, summary["split"]).items()]
    client.log_batch(loaded.mlflow_run_id, metrics=metrics)
    out = loaded.run_dir / "evals"
    out.mkdir(exist_ok=True)
    report = out / f"{summary['split']}-{loaded.path.name}.json"
    report.write_text(json.dumps(summary, indent=2))
    client.log_artifact(loaded.mlflow_run_id, str(report), "evals")
    if png is not None:
        client.log_artifact(loaded.mlflow_run_id, str(png), "evals")


# -------------------------------------------------------------------------------------- generate


def generate_command(args: argparse.Namespace) -> int:
    """Example: `metastate generate runs/demo --prompt "Hello" --max-new-tokens 20 --temperature 0`."""
    from data_pipeline.tokenizer import EOS_ID, load_tokenizer
    from evals.checkpoint import load_for_eval
    from model.generate import iter_generate
    from training.checkpointing import CheckpointError

    if not args.prompt:
        print("generate: --prompt is empty; pass some text to continue", file=sys.stderr)
        return 2
    try:
        loaded = load_for_eval(args.checkpoint, args.device)
        tokenizer = load_tokenizer(loaded.config.get("data", {}).get("tokenizer", "tiktoken"))
        prompt = tokenizer.encode(args.prompt)
        tokens = iter_generate(loaded.model, prompt, args.max_new_tokens, args.temperature,
                               args.top_p, args.seed)
        # Tokens can end inside a multi-byte character: decode the byte stream incrementally.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sys.stdout.write(args.prompt)
        for token in tokens:
            token_id = int(token[0])
            if args.stop_at_eos and token_id == EOS_ID:
                break
            sys.stdout.write(decoder.decode(tokenizer.token_bytes(token_id)))
            sys.stdout.flush()
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    except (CheckpointError, ValueError) as err:
        # model/generate.py's messages already name the command
        print(f"generate: {str(err).removeprefix('generate: ')}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------------- runs compare


def compare_command(args: argparse.Namespace) -> int:
    """Example: `metastate runs compare runs/a runs/b --png curves.png`."""
    from evals.runs import RunsError, compare_runs, comparison_table, plot_loss_curves

    try:
        rows, curves = compare_runs(args.runs, args.experiment, args.tracking_uri)
    except RunsError as err:
        print(f"runs compare: {err}", file=sys.stderr)
        return 2
    png = plot_loss_curves(curves, args.png)
    if args.json:
        print(json.dumps({"runs": rows, "png": str(png)}))
        return 0
    print(comparison_table(rows))
    print(f"loss curves: {png}")
    return 0
