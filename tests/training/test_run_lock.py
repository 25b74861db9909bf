"""Issue 18 item 1: one live writer per train.out_dir."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from launch.cli import main
from training.run_lock import LOCK_NAME, RunLock, RunLockError

from .conftest import REPO, TINY, run_cli


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_is_refused_with_one_line_naming_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        with pytest.raises(RunLockError, match=f"is in use by pid {holder.pid} on {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_from_another_host_is_refused_and_says_how_to_clear_it(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "node-17", "pid": 1}))
    with pytest.raises(RunLockError, match="in use by pid 1 on node-17.*delete the lock file"):
        RunLock(tmp_path).acquire()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_notice(tmp_path, caplog):
    dead = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead}))
    with caplog.at_level("WARNING", logger="metastate.train"):
        lock = RunLock(tmp_path).acquire()
    assert f"pid {dead}, no longer running" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_second_trainer_on_the_same_out_dir_refuses_and_the_first_finishes_cleanly(tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "launch.cli", "train", "smoke", *TINY, "train.steps=25",
                              f"train.out_dir={out}"], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not (out / LOCK_NAME).exists():
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        # the second trainer runs in this process (no start-up time), while the first trains
        assert main(["train", "smoke", *TINY, "train.steps=25", f"train.out_dir={out}",
                     "train.resume=auto"]) == 2
        assert first.poll() is None
        assert capsys.readouterr().err.strip().splitlines() == [
            f"train: train.out_dir={out} is in use by pid {first.pid} on {socket.gethostname()} "
            f"(lock {out / LOCK_NAME}); wait for that run or stop it, or pick another train.out_dir"]
    finally:
        assert first.wait(timeout=300) == 0, first.stderr.read()
    assert not (out / LOCK_NAME).exists()  # released on exit
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 26))  # only the first run wrote


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node(tmp_path, monkeypatch, caplog):
    # a node failure kills the job without a clean exit; SLURM requeues it on another node
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "node-3", "pid": 4242, "slurm_job": "77"}))
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(RunLockError, match="in use by pid 4242 on node-3"):  # another job
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with caplog.at_level("WARNING", logger="metastate.train"):
        RunLock(tmp_path).acquire().release()
    assert "SLURM job 77's previous run (pid 4242 on node-3)" in caplog.text


def test_every_torchrun_rank_refuses_a_held_out_dir_before_the_process_group_starts(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        proc = run_cli(["train", "smoke", *TINY, f"train.out_dir={tmp_path}"], nproc=2)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    refusals = [line for line in proc.stderr.splitlines() if f"is in use by pid {holder.pid}" in line]
    # one line per rank that got to say it: torchrun SIGTERMs the other rank as soon as the first
    # exits, which can be before that rank has printed its own refusal
    assert 1 <= len(refusals) <= 2, proc.stderr[-3000:]
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()
    # torchrun's agent reports the failed ranks with its own traceback (from site-packages, which
    # may live inside the repository's .venv); none comes from the project's code
    ours = [line for line in proc.stderr.splitlines()
            if f'File "{REPO}' in line and "site-packages" not in line]
    assert not ours, proc.stderr[-3000:]
