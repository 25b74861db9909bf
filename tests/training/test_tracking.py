import logging
from dataclasses import dataclass

import pytest
from mlflow import MlflowClient

from training.tracking import MlflowTracker, default_tracking_uri, flatten


@dataclass
class Cfg:
    backend: str = "mlflow"
    uri: str = ""
    experiment: str = "tests"
    run_name: str = ""


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_flatten_config():
    assert flatten({"optim": {"lr": 0.001, "betas": [0.9, 0.99]}, "seed": 1}) == {
        "optim.lr": "0.001", "optim.betas": "[0.9, 0.99]", "seed": "1"}


def test_local_run_logs_params_metrics_artifacts_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    tracker = MlflowTracker(Cfg(), run_dir)
    tracker.start(params={"optim.lr": "0.001"}, tags={"family": "metastate"})
    for step in range(3):
        tracker.log_metrics(step, {"loss": 3.0 - step})
    (run_dir / "config.yaml").write_text("a: 1\n")
    tracker.log_artifact(run_dir / "config.yaml")
    tracker.finish()
    run_id = tracker.run_id
    assert (run_dir / "mlflow.db").exists()

    resumed = MlflowTracker(Cfg(), run_dir)
    resumed.start(params={"optim.lr": "0.5"}, tags={"world_size": "2"}, run_id=run_id)
    resumed.log_metrics(3, {"loss": 0.5})
    resumed.finish()

    client = MlflowClient(tracking_uri=default_tracking_uri(run_dir))
    run = client.get_run(run_id)
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params == {"optim.lr": "0.001"}  # a resume never rewrites the original params
    assert run.data.tags["family"] == "metastate" and run.data.tags["world_size"] == "2"
    assert history(client, run_id, "loss") == [(0, 3.0), (1, 2.0), (2, 1.0), (3, 0.5)]
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    assert (run_dir / "mlartifacts").is_dir()


def test_disabled_tracker_touches_nothing(tmp_path):
    tracker = MlflowTracker(Cfg(), tmp_path / "run", enabled=False)
    tracker.start(params={"a": "1"})
    tracker.log_metrics(0, {"loss": 1.0})
    tracker.finish()
    assert not (tmp_path / "run").exists() and tracker.run_id is None


@pytest.mark.slow
def test_server_down_then_up_replays_buffer_into_one_run(tmp_path, mlflow_server, caplog):
    tracker = MlflowTracker(Cfg(uri=mlflow_server.uri, experiment="replay"), tmp_path / "run",
                            flush_interval_s=0.2)
    with caplog.at_level(logging.WARNING, logger="metastate.tracking"):
        tracker.start(params={"train.steps": "4"}, tags={"family": "rwkv7"})
        for step in range(4):
            tracker.log_metrics(step, {"loss": 4.0 - step, "lr": 1e-3})
        assert not tracker.flush() and tracker.run_id is None and tracker.pending > 0
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # warned once, not once per step

    mlflow_server.start()
    tracker.log_metrics(4, {"loss": 0.1})
    tracker.finish()
    assert tracker.pending == 0
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"train.steps": "4"}
    assert [s for s, _ in history(client, tracker.run_id, "loss")] == [0, 1, 2, 3, 4]

    # a resumed job (e.g. a requeued SLURM job) continues the same run on the server
    resumed = MlflowTracker(Cfg(uri=mlflow_server.uri, experiment="replay"), tmp_path / "run")
    resumed.start(run_id=tracker.run_id)
    resumed.log_metrics(5, {"loss": 0.05})
    resumed.finish()
    assert [s for s, _ in history(client, tracker.run_id, "loss")] == [0, 1, 2, 3, 4, 5]


def test_resuming_a_run_the_store_does_not_know_logs_to_a_new_run(tmp_path, caplog):
    run_dir = tmp_path / "run"
    tracker = MlflowTracker(Cfg(), run_dir)
    with caplog.at_level(logging.WARNING, logger="metastate.tracking"):
        tracker.start(params={"a": "1"}, tags={"family": "rwkv7"}, run_id="0" * 32)
        tracker.log_metrics(1, {"loss": 2.0})
        tracker.finish(timeout_s=10)
    assert tracker.pending == 0 and tracker.run_id != "0" * 32
    assert any("has no run" in r.getMessage() for r in caplog.records)
    run = MlflowClient(tracking_uri=default_tracking_uri(run_dir)).get_run(tracker.run_id)
    assert run.data.tags["metastate.previous_run_id"] == "0" * 32
    assert run.data.params == {"a": "1"} and run.data.metrics == {"loss": 2.0}
