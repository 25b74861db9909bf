"""training/exit_watchdog.py: a finished run whose process does not exit is ended with the exit
code it had decided on, after every thread's stack is printed."""

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

STUCK_AT_EXIT = """
import threading
from training.exit_watchdog import arm_exit_watchdog

def wait_forever_for_a_peer():
    threading.Event().wait()

threading.Thread(target=wait_forever_for_a_peer).start()   # not a daemon: blocks interpreter exit
arm_exit_watchdog(75, grace_s=1.0)
"""


def test_a_process_stuck_after_its_run_exits_with_its_code_and_shows_the_stuck_thread():
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", STUCK_AT_EXIT], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 75, proc.stderr
    assert time.monotonic() - start < 30
    assert "the run finished but the process had not exited 1 s later" in proc.stderr
    assert "wait_forever_for_a_peer" in proc.stderr      # the stack of the thread that blocked


def test_a_process_that_exits_in_time_keeps_its_own_exit_code():
    code = "from training.exit_watchdog import arm_exit_watchdog\narm_exit_watchdog(75, grace_s=30)\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""


TRAIN_THEN_LIST_THREADS = """
import sys, threading
from launch.cli import main, program
sys.argv = ["metastate", "train", "smoke", *sys.argv[2:]]
code = program() if AS_PROGRAM else main(sys.argv[1:])
print(code, sorted(t.name for t in threading.enumerate() if t.name == "exit-watchdog"))
"""


def test_only_the_metastate_program_arms_the_watchdog_after_a_finished_run(tmp_path):
    tiny = ["model.n_layer=1", "model.d_model=32", "model.head_size=16", "data.seq_len=16",
            "train.micro_batch_size=2", "train.global_batch_size=2", "train.steps=1",
            "train.eval_every=0", "tracking.backend=none", "checkpoint.every=0"]
    seen = {}
    for as_program in (True, False):
        script = TRAIN_THEN_LIST_THREADS.replace("AS_PROGRAM", str(as_program))
        proc = subprocess.run([sys.executable, "-c", script, "x", *tiny,
                               f"train.out_dir={tmp_path / str(as_program)}"], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        seen[as_program] = proc.stdout.strip().splitlines()[-1]
    assert seen == {True: "0 ['exit-watchdog']", False: "0 []"}
