"""Printing and plotting evaluation results: the per-subset table, the loss-by-position table and
its PNG, and the metric names they go to MLflow under."""

import re
from pathlib import Path

_MLFLOW_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_name(*parts: str) -> str:
    """An MLflow-safe metric name: metric_name("eval/val", "Wikipedia (en)", "bpb") ->
    'eval/val/Wikipedia _en_/bpb' (MLflow rejects brackets and most punctuation)."""
    return "/".join(_MLFLOW_UNSAFE.sub("_", part) for part in parts)


def eval_metrics(summary: dict, split: str) -> dict[str, float]:
    """The flat metrics one `metastate eval` logs: overall and per-subset loss and bpb."""
    prefix = f"eval/{split}"
    metrics = {metric_name(prefix, "loss"): summary["overall"]["loss"],
               metric_name(prefix, "perplexity"): summary["overall"]["perplexity"],
               metric_name(prefix, "bpb"): summary["overall"]["bits_per_byte"]}
    for name, subset in summary["subsets"].items():
        metrics[metric_name(prefix, name, "loss")] = subset["loss"]
        metrics[metric_name(prefix, name, "bpb")] = subset["bits_per_byte"]
    return metrics


def subset_table(summary: dict) -> str:
    rows = [("all", summary["overall"])] + list(summary["subsets"].items())
    width = max(len(name) for name, _ in rows)
    lines = [f"{'subset':<{width}}  {'docs':>6}  {'tokens':>10}  {'bytes':>11}  {'loss':>7}  "
             f"{'ppl':>10}  {'bpb':>6}"]
    for name, s in rows:
        lines.append(f"{name:<{width}}  {s['documents']:>6}  {s['tokens']:>10,}  {s['bytes']:>11,}  "
                     f"{s['loss']:>7.4f}  {s['perplexity']:>10.2f}  {s['bits_per_byte']:>6.4f}")
    return "\n".join(lines)


def position_table(buckets: list[dict], context: int) -> str:
    lines = [f"loss by token position (window context {context}; * = beyond it)",
             f"{'positions':>17}  {'tokens':>10}  {'loss':>7}"]
    for b in buckets:
        mark = "*" if b["beyond_context"] else " "
        lines.append(f"{b['start']:>7}-{b['end'] - 1:<7}{mark}  {b['tokens']:>10,}  {b['loss']:>7.4f}")
    return "\n".join(lines)


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as a PNG (creating its folder) and release it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_positions(buckets: list[dict], context: int, path: str | Path, title: str) -> Path:
    """Mean loss against token position (log x), with the training context marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([(b["start"] + b["end"] - 1) / 2 + 1 for b in buckets], [b["loss"] for b in buckets],
            marker="o")
    ax.axvline(context, color="gray", linestyle="--", label=f"context {context}")
    ax.set_xscale("log")
    ax.set_xlabel("token position in document (1 = first)")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)
