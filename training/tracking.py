"""Experiment tracking in MLflow, from rank 0 only, that never stalls or stops training.

Everything (params, tags, metrics, artifacts) goes into an ordered outbox that a background thread
sends with `log_batch` every few seconds: synchronous HTTP logging costs ~0.2 s a call, which a
training step must not pay. When the server is unreachable the tracker warns once, keeps the
outbox, and replays it in order when the server answers again; the run is created lazily, so a
run that starts while the server is down still ends up complete.
"""

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

log = logging.getLogger("metastate.tracking")

_MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_CHARS = 6000
# MLflow error codes that mean "the store answered and refused", as opposed to "no answer"
_REJECTED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
             "RESOURCE_ALREADY_EXISTS", "INVALID_STATE"}


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": "0.001"}; lists become their repr."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM_CHARS]
    return flat


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


class MlflowTracker:
    """Rank-0 MLflow logging with an outbox; on other ranks (enabled=False) every call is a no-op.

    Example:
        >>> tracker = MlflowTracker(cfg.tracking, run_dir=Path("runs/demo"))
        >>> tracker.start(params=flatten(config_dict), tags={"family": "metastate"})
        >>> tracker.log_metrics(step=10, metrics={"loss": 3.2})
        >>> tracker.finish()
    """

    def __init__(self, cfg, run_dir: Path, enabled: bool = True, flush_interval_s: float = 5.0):
        self.enabled = enabled and cfg.backend == "mlflow"
        self.run_dir = Path(run_dir)
        self.uri = cfg.uri or default_tracking_uri(self.run_dir)
        self.experiment = cfg.experiment
        self.run_name = cfg.run_name or self.run_dir.name
        self.flush_interval_s = flush_interval_s
        self.run_id: str | None = None
        self._outbox: deque = deque()
        self._outbox_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._unreachable_since: float | None = None
        self._thread: threading.Thread | None = None
        self._client = None

    # ------------------------------------------------------------------ public, called by the trainer

    def start(self, params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
              run_id: str | None = None) -> None:
        """Begin (or, with `run_id` from a checkpoint, continue) the run; params go to new runs
        only (a resume never rewrites them), including one that replaces a run the store lost."""
        if not self.enabled:
            return
        # Fail fast instead of MLflow's minutes of retries: the outbox retries for us.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self._enqueue("open", {"tags": dict(tags or {}), "params": dict(params or {})})
        self._thread = threading.Thread(target=self._flush_loop, name="mlflow-outbox", daemon=True)
        self._thread.start()
        self.flush()

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            self._enqueue("metrics", (step, int(time.time() * 1000), dict(metrics)))

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            self._enqueue("tags", dict(tags))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file; its content is read when sent, so pass files that stay in place."""
        if self.enabled:
            self._enqueue("artifact", (str(path), artifact_path))

    def flush(self) -> bool:
        """Try to send everything now; True when the outbox is empty afterwards."""
        if not self.enabled:
            return True
        with self._send_lock:
            self._send_pending()
        return not self._outbox

    def finish(self, status: str = "FINISHED", timeout_s: float = 30.0) -> None:
        """Flush (retrying until `timeout_s`) and mark the run terminated."""
        if not self.enabled:
            return
        if status:
            self._enqueue("close", status)
        deadline = time.monotonic() + timeout_s
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(min(1.0, self.flush_interval_s))
        self._stopping = True
        self._wake.set()
        if self._outbox:
            log.warning("MLflow at %s: %d tracking records could not be sent before exit",
                        self.uri, len(self._outbox))

    @property
    def pending(self) -> int:
        return len(self._outbox)

    # ------------------------------------------------------------------ outbox

    def _enqueue(self, kind: str, payload) -> None:
        with self._outbox_lock:
            self._outbox.append((kind, payload))

    def _flush_loop(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if not self._stopping:
                self.flush()

    def _send_pending(self) -> None:
        while True:
            with self._outbox_lock:
                if not self._outbox:
                    return
                kind, payload = self._outbox[0]
                batch = [payload]
                if kind == "metrics":  # coalesce consecutive metric records into one call
                    for next_kind, next_payload in list(self._outbox)[1:]:
                        full = sum(len(p[2]) for p in batch) >= _MAX_METRICS_PER_BATCH
                        if next_kind != "metrics" or full:
                            break
                        batch.append(next_payload)
            try:
                self._send(kind, batch)
            except Exception as err:  # noqa: BLE001 - any failure: keep the records, retry later
                if getattr(err, "error_code", None) in _REJECTED and kind != "open":
                    # the store answered and refused this record: retrying cannot help, and
                    # keeping it would block every record behind it
                    log.warning("MLflow at %s rejected a %s record (%s); dropped it", self.uri, kind, err)
                    with self._outbox_lock:
                        for _ in batch:
                            self._outbox.popleft()
                    continue
                if self._unreachable_since is None:
                    self._unreachable_since = time.monotonic()
                    log.warning("MLflow at %s is unreachable (%s); training continues and %d records "
                                "are kept to replay when it answers", self.uri, type(err).__name__,
                                len(self._outbox))
                return
            with self._outbox_lock:
                for _ in batch:
                    self._outbox.popleft()
            if self._unreachable_since is not None:
                log.warning("MLflow at %s answers again after %.0f s; replaying buffered records",
                            self.uri, time.monotonic() - self._unreachable_since)
                self._unreachable_since = None

    def _send(self, kind: str, batch: list) -> None:
        from mlflow.entities import Metric, RunTag

        client = self._get_client()
        if kind == "open":
            self._open_run(client, batch[0])
        elif kind == "tags":
            client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in batch[0].items()])
        elif kind == "metrics":
            metrics = [Metric(name, float(value), ts, step)
                       for step, ts, values in batch for name, value in values.items()]
            client.log_batch(self.run_id, metrics=metrics)
        elif kind == "artifact":
            path, artifact_path = batch[0]
            client.log_artifact(self.run_id, path, artifact_path)
        elif kind == "close":
            client.set_terminated(self.run_id, status=batch[0])

    def _get_client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _open_run(self, client, spec: dict) -> None:
        if self.run_id is not None:
            try:
                client.get_run(self.run_id)
            except Exception as err:
                if getattr(err, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                    raise
                # tracking.uri changed or the store was deleted: continue in a new run that
                # names the old one, rather than logging nothing
                log.warning("MLflow at %s has no run %s to resume; logging to a new run", self.uri,
                            self.run_id)
                spec = {**spec, "tags": {**spec["tags"], "metastate.previous_run_id": self.run_id}}
                self.run_id = None
        if self.run_id is not None:
            client.update_run(self.run_id, status="RUNNING")
            from mlflow.entities import RunTag

            tags = {**spec["tags"], "metastate.resumed": "true"}
            client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
            return
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            location = None
            if self.uri.startswith("sqlite:"):  # keep a local run's artifacts inside its run dir
                location = (self.run_dir.resolve() / "mlartifacts").as_uri()
            experiment_id = client.create_experiment(self.experiment, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        run = client.create_run(experiment_id, run_name=self.run_name,
                                tags={k: str(v) for k, v in spec["tags"].items()})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in spec["params"].items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=items[i:i + _MAX_PARAMS_PER_BATCH])
