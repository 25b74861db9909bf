"""`metastate runs compare`: training runs side by side, pulled from MLflow.

A run is named by its id or run name in a tracking store, or by its run directory (the store and
run id come from the directory's config.yaml and newest checkpoint manifest, so a run that logged
to its local sqlite store needs no URI).
"""

import dataclasses
import math
import os
from pathlib import Path

import yaml

from evals.report import save_figure
from model.config import ModelConfig
from model.size import model_size
from training.checkpointing import find_latest, read_manifest
from training.tracking import default_tracking_uri

BPB_METRIC = "eval/val/bpb"          # logged by `metastate eval --mlflow` (evals/report.py)


class RunsError(ValueError):
    pass


def _client(uri: str):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _from_run_dir(path: Path) -> tuple[str, str]:
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    tracking = (config or {}).get("tracking", {})
    uri = tracking.get("uri") or default_tracking_uri(path)
    checkpoint = find_latest(path / "checkpoints")
    run_id = read_manifest(checkpoint).get("mlflow_run_id") if checkpoint else None
    if run_id:
        return uri, run_id
    runs = _client(uri).search_runs(_experiment_ids(_client(uri)), order_by=["attributes.start_time DESC"],
                                    max_results=1) if (path / "mlflow.db").is_file() else []
    if not runs:
        raise RunsError(f"{path}: no MLflow run recorded (no checkpoint manifest names one and no "
                        "local mlflow.db); pass a run id with --tracking-uri")
    return uri, runs[0].info.run_id


def _experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _find_runs(refs: list[str], experiment: str | None, uri: str | None) -> list[tuple]:
    found = []
    for ref in refs:
        if Path(ref).is_dir():
            run_uri, run_id = _from_run_dir(Path(ref))
            found.append((_client(run_uri), _client(run_uri).get_run(run_id)))
            continue
        if uri is None:
            raise RunsError(f"run {ref!r} is not a run directory; pass --tracking-uri (or set "
                            "MLFLOW_TRACKING_URI) to look it up by id or name")
        client = _client(uri)
        runs = client.search_runs(_experiment_ids(client), f"attributes.run_id = '{ref}'") \
            if len(ref) == 32 and all(c in "0123456789abcdef" for c in ref) else []
        runs = runs or client.search_runs(_experiment_ids(client), f"attributes.run_name = '{ref}'")
        if not runs:
            raise RunsError(f"no run with id or name {ref!r} in {uri}")
        found += [(client, run) for run in runs]
    if experiment is not None:
        if uri is None:
            raise RunsError("--experiment needs --tracking-uri (or MLFLOW_TRACKING_URI)")
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise RunsError(f"no experiment {experiment!r} in {uri}; experiments there: {names}")
        found += [(client, run) for run in client.search_runs([exp.experiment_id],
                                                              order_by=["attributes.start_time ASC"])]
    if not found:
        raise RunsError("name runs (ids, names or run directories) or pass --experiment NAME")
    return found


def _model_params(params: dict[str, str]) -> int | None:
    values = {}
    for f in dataclasses.fields(ModelConfig):
        if f"model.{f.name}" in params:
            values[f.name] = type(f.default)(params[f"model.{f.name}"])
    try:
        return model_size(ModelConfig(**values)).total_params if values else None
    except (ValueError, TypeError):
        return None


def compare_runs(refs: list[str], experiment: str | None = None,
                 uri: str | None = None) -> tuple[list[dict], dict[str, dict]]:
    """Rows for the table and, per run label, its loss curves {"loss": [(tokens, value)], ...}.

    Example:
        >>> rows, curves = compare_runs(["runs/a", "runs/b"])
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    rows, curves = [], {}
    for client, run in _find_runs(list(refs), experiment, uri):
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        tokens_per_step = (int(params.get("train.global_batch_size", 0))
                           * int(params.get("data.seq_len", 0)))
        history = {name: client.get_metric_history(run.info.run_id, name)
                   for name in ("loss", "val_loss")}
        last_step = max((m.step for m in history["loss"]), default=0)
        label = f"{run.info.run_name or run.info.run_id[:8]} ({run.info.run_id[:8]})"
        rows.append({
            "run": label, "run_id": run.info.run_id,
            "family": tags.get("family", params.get("model.family", "?")),
            "preset": tags.get("preset", "?"), "params": _model_params(params),
            "tokens": last_step * tokens_per_step, "val_loss": metrics.get("val_loss"),
            "bpb": metrics.get(BPB_METRIC), "tokens_per_s": metrics.get("tokens_per_s"),
            "status": run.info.status,
        })
        curves[label] = {name: [(m.step * tokens_per_step, m.value) for m in sorted(h, key=lambda m: m.step)]
                         for name, h in history.items()}
    return rows, curves


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def comparison_table(rows: list[dict]) -> str:
    headers = ["run", "family", "preset", "params", "tokens", "val_loss", "bpb", "tokens/s"]
    cells = [[r["run"], r["family"], r["preset"], _fmt(r["params"], ","), _fmt(r["tokens"], ","),
              _fmt(r["val_loss"], ".4f"), _fmt(r["bpb"], ".4f"), _fmt(r["tokens_per_s"], ",.0f")]
             for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    def line(values):  # text columns left-aligned, numbers right-aligned
        return "  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join(line(values) for values in [headers, *cells])


def plot_loss_curves(curves: dict[str, dict], path: str | Path) -> Path:
    """Training loss (lines) and validation loss (markers) against tokens, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, series) in enumerate(curves.items()):
        color = f"C{i % 10}"
        if series["loss"]:
            ax.plot(*zip(*series["loss"]), color=color, label=f"{label} train")
        if series["val_loss"]:
            ax.plot(*zip(*series["val_loss"]), color=color, linestyle="--", marker="o",
                    label=f"{label} val")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats)")
    ax.legend(fontsize="small")
    return save_figure(fig, path)
