"""SIGUSR1/SIGTERM: a flag in the handler, one agreed stop at a step boundary, a checkpoint, exit 75."""

import os
import signal
import subprocess
import sys
import threading
import time

import torch

from launch.run_config import load_run_config
from training.checkpointing import find_latest, read_manifest
from training.distributed import DistEnv
from training.monitors import MetricsLog
from training.preemption import PREEMPTED_EXIT_CODE, PreemptionHandler, requeue_slurm_job
from training.trainer import Trainer

from .conftest import REPO, TINY

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_handler_records_signals_and_restores_the_previous_handlers():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    handler = PreemptionHandler(lambda flags: flags).install()
    try:
        assert handler.poll() is None
        os.kill(os.getpid(), signal.SIGTERM)
        request = handler.poll()
        assert (request.signal_name, request.requeue) == ("SIGTERM", False)
        os.kill(os.getpid(), signal.SIGUSR1)
        request = handler.poll()  # SIGUSR1 (requeue) wins over SIGTERM (stop)
        assert (request.signal_name, request.requeue) == ("SIGUSR1", True)
    finally:
        handler.close()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_signal_seen_by_another_rank_stops_this_one_too():
    other_rank_got_usr1 = torch.tensor([1.0, 0.0])
    handler = PreemptionHandler(lambda flags: flags + other_rank_got_usr1)  # a 2-rank all-reduce
    assert handler.poll().requeue


def test_requeue_outside_slurm_does_nothing_and_says_how_to_continue():
    lines = []
    requeue_slurm_job(lines.append, environ={})
    (line,) = lines
    assert "rerun the same command with train.resume=auto" in line


def test_requeue_is_announced_before_scontrol_runs_and_a_failure_adds_a_line(tmp_path, monkeypatch):
    """SLURM cancels the job step as soon as the requeue takes effect, so the announcement must
    already be out when scontrol runs (here a fake scontrol records what was printed by then)."""
    lines = []
    fake = tmp_path / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'called'}\necho 'Invalid job id' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")

    def report(line):
        lines.append((line, (tmp_path / "called").exists()))

    requeue_slurm_job(report, environ={"SLURM_JOB_ID": "42"})
    assert lines[0] == ("requeueing SLURM job 42; it resumes from the checkpoint when it starts again", False)
    assert lines[1][0] == ("scontrol requeue 42 failed: Invalid job id; resubmit with `metastate submit` "
                           "to continue")
    assert (tmp_path / "called").read_text() == "requeue 42\n"


def test_trainer_checkpoints_at_the_next_step_boundary_and_resumes_from_it(tmp_path):
    out = tmp_path / "run"
    cfg = load_run_config("smoke", [*TINY, f"train.out_dir={out}", "train.steps=4", "checkpoint.every=0"])
    before = signal.getsignal(signal.SIGTERM)
    trainer = Trainer(cfg, CPU)
    os.kill(os.getpid(), signal.SIGTERM)  # arrives during setup: handled at the first boundary
    result = trainer.run()
    assert result["step"] == 1 and trainer.stop_request.signal_name == "SIGTERM"
    assert read_manifest(find_latest(out / "checkpoints"))["step"] == 1
    assert signal.getsignal(signal.SIGTERM) is before  # restored when run() ends
    resumed = Trainer(load_run_config("smoke", [*TINY, f"train.out_dir={out}", "train.steps=4",
                                                "checkpoint.every=0", "train.resume=auto"]), CPU)
    assert resumed.run()["step"] == 4 and resumed.stop_request is None
    assert list(MetricsLog.read(out / "metrics.jsonl")) == [1, 2, 3, 4]


def test_train_command_exits_with_the_preempted_code_after_sigusr1(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "train", "smoke", *TINY, "train.steps=500",
                             "checkpoint.every=1000", f"train.out_dir={out}"], cwd=REPO,
                            env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() or len(MetricsLog.read(out / "metrics.jsonl")) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    last_logged = max(MetricsLog.read(out / "metrics.jsonl"))
    assert f"train: stopped at step {last_logged} on SIGUSR1 with a checkpoint; not under SLURM" in stderr
    assert read_manifest(find_latest(out / "checkpoints"))["step"] == last_logged < 500


def test_outside_the_main_thread_install_leaves_the_handlers_alone():
    before = signal.getsignal(signal.SIGUSR1)
    worker = threading.Thread(target=lambda: PreemptionHandler(lambda flags: flags).install())
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGUSR1) is before
