"""A finished run must not hold its allocation: once `metastate train` has done its work (the last
checkpoint saved, every rank past the final barrier), the process has a bounded time to exit.

A process that is still alive after that (a peer stuck tearing down the process group, a library
thread that keeps the interpreter from exiting) would otherwise keep a SLURM job, and its nodes,
until the time limit, and torchrun's agents on the other nodes wait for it in their exit barrier.
The watchdog prints every thread's stack to stderr, so the cause is on record, then ends the
process with the exit code the run had already decided on.
"""

import faulthandler
import os
import sys
import threading

WATCHDOG_THREAD = "exit-watchdog"
EXIT_GRACE_S = 120.0   # destroying the process group and interpreter exit take seconds, not minutes


def arm_exit_watchdog(exit_code: int, grace_s: float = EXIT_GRACE_S) -> None:
    """After `grace_s` seconds, if the process still runs: dump all stacks, exit with `exit_code`.

    Example: arm_exit_watchdog(0) right after the final barrier of a finished run.
    """
    def expire() -> None:
        print(f"train: the run finished but the process had not exited {grace_s:.0f} s later; "
              f"every thread's stack follows, then it exits with code {exit_code}",
              file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(exit_code)

    timer = threading.Timer(grace_s, expire)
    timer.name = WATCHDOG_THREAD
    timer.daemon = True   # never what keeps the interpreter alive
    timer.start()
