"""Stopping cleanly on SIGUSR1/SIGTERM: checkpoint at a step boundary, then requeue under SLURM.

The signal handler only records the signal. At each step boundary the trainer asks `poll()`,
which all-reduces the flags of every rank in one collective, so all ranks stop after the same
step even when the signal reached only some of them. The trainer then writes a checkpoint and
leaves its loop; `metastate train` calls `requeue_slurm_job()` (on rank 0, for SIGUSR1) and every
rank exits with PREEMPTED_EXIT_CODE.

- SIGUSR1 is the signal `metastate submit` asks SLURM to send `launch.signal_grace_s` before the
  time limit (`--signal=USR1@grace`): checkpoint, then rank 0 runs `scontrol requeue
  $SLURM_JOB_ID`, and the requeued job resumes from that checkpoint (train.resume=auto).
- SIGTERM is what `scancel`, a node shutdown or SLURM preemption sends: checkpoint, no requeue
  (a cancel means stop; a preemption with PreemptMode=REQUEUE is requeued by SLURM itself).
"""

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger("metastate.preemption")

# EX_TEMPFAIL from sysexits.h: "try again later". Every rank of a run stopped by a signal exits
# with it (after the checkpoint); 0 means training finished, 2 a bad config, 3 divergence.
PREEMPTED_EXIT_CODE = 75

REQUEUE_SIGNAL = signal.SIGUSR1
STOP_SIGNAL = signal.SIGTERM


@dataclass(frozen=True)
class StopRequest:
    signal_name: str          # "SIGUSR1" or "SIGTERM" (SIGUSR1 wins when ranks saw both)
    requeue: bool             # True for SIGUSR1: ask SLURM to run the job again


class PreemptionHandler:
    """Installs the handlers on `install()`, restores the previous ones on `close()`.

    `all_reduce_sum` sums a small tensor over ranks (DistEnv.all_reduce_sum).

    Example:
        >>> handler = PreemptionHandler(env.all_reduce_sum).install()
        >>> if (request := handler.poll()) is not None: save_checkpoint(); ...
    """

    def __init__(self, all_reduce_sum):
        self.all_reduce_sum = all_reduce_sum
        self._seen = {REQUEUE_SIGNAL: False, STOP_SIGNAL: False}
        self._previous: dict[int, object] = {}

    def install(self) -> "PreemptionHandler":
        if threading.current_thread() is not threading.main_thread():
            log.warning("trainer built outside the main thread: SIGUSR1/SIGTERM keep their default "
                        "action (no checkpoint before the process ends)")
            return self
        for sig in self._seen:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def take_over(self, other: "PreemptionHandler") -> None:
        """Keep the signals `other` recorded and nobody polled (a staged run's stage that ended
        on the step the signal came in: launch/stages.py polls it before the next stage)."""
        for sig, seen in other._seen.items():
            self._seen[sig] = self._seen[sig] or seen

    def forget(self) -> None:
        """Drop the recorded signals (another handler took them over)."""
        self._seen = dict.fromkeys(self._seen, False)

    def _on_signal(self, signum: int, frame) -> None:
        self._seen[signal.Signals(signum)] = True  # only a flag: the loop acts at the step boundary

    def poll(self) -> StopRequest | None:
        """One collective on every rank: the stop request if any rank got a signal, else None."""
        flags = torch.tensor([float(self._seen[REQUEUE_SIGNAL]), float(self._seen[STOP_SIGNAL])])
        requeue_count, stop_count = self.all_reduce_sum(flags).tolist()
        if requeue_count > 0:
            return StopRequest(REQUEUE_SIGNAL.name, requeue=True)
        if stop_count > 0:
            return StopRequest(STOP_SIGNAL.name, requeue=False)
        return None


def requeue_slurm_job(report: Callable[[str], None], environ=os.environ) -> None:
    """Run `scontrol requeue $SLURM_JOB_ID`, telling `report` what happens, one line a call.

    The line saying the job is being requeued comes *before* scontrol runs: SLURM cancels the job
    step as soon as the requeue takes effect, and this process may not live to print afterwards.
    A failed requeue reports a second line. Outside SLURM (no SLURM_JOB_ID) it does nothing:
    `metastate launch local` users rerun the same command."""
    job_id = environ.get("SLURM_JOB_ID")
    if not job_id:
        report("not under SLURM: rerun the same command with train.resume=auto to continue")
        return
    report(f"requeueing SLURM job {job_id}; it resumes from the checkpoint when it starts again")
    try:
        proc = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        report(f"scontrol requeue {job_id} failed ({err}); resubmit with `metastate submit` to continue")
        return
    if proc.returncode != 0:
        report(f"scontrol requeue {job_id} failed: {proc.stderr.strip()}; resubmit with "
               "`metastate submit` to continue")
