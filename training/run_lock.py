"""One live writer per run directory: `<out_dir>/.run.lock` holds the host and pid of the
process (rank 0) that trains into it.

Two trainers on one out_dir interleave metrics.jsonl and publish checkpoints made of both runs'
files; the lock makes the second one refuse. A lock left by a process that died (kill -9, a
crashed node) is taken over, with a notice, when its holder is on this host and no longer
running, or when it carries this process's SLURM job id (a requeued job: SLURM requeues a job
only after its previous run ended, on whatever node); a lock from another host cannot be checked
from here, so it refuses and says how to clear it.
"""

import errno
import json
import logging
import os
import socket
from pathlib import Path

from training.checkpointing import CheckpointError

LOCK_NAME = ".run.lock"
log = logging.getLogger("metastate.train")


class RunLockError(CheckpointError):
    """The run directory is in use by another live process (or cannot be created)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Example:
        >>> lock = RunLock(Path("runs/demo")).acquire()   # RunLockError if another run holds it
        >>> ...; lock.release()
    """

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.held = False

    def acquire(self) -> "RunLock":
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunLockError(f"train.out_dir={self.out_dir}: cannot create it "
                               f"({err.strerror or err}); pick a writable train.out_dir") from None
        me = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID")}
        for _ in range(3):  # create, or take over a stale lock and create again
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me["host"], me["slurm_job"])
                continue
            except OSError as err:
                raise RunLockError(f"train.out_dir={self.out_dir}: cannot write {self.path} "
                                   f"({err.strerror or err}); pick a writable train.out_dir") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunLockError(f"{self.path}: could not take the run lock (another process keeps "
                           "recreating it); check what else writes into train.out_dir")

    def check(self) -> None:
        """Raise RunLockError if a live run holds the directory; writes nothing. Every rank calls
        it before the process group starts, so a refused torchrun job stops at once on all ranks."""
        if self.path.exists():
            self._take_over_if_stale(socket.gethostname(), os.environ.get("SLURM_JOB_ID"), dry=True)

    def _take_over_if_stale(self, host: str, slurm_job: str | None, dry: bool = False) -> None:
        try:
            holder = json.loads(self.path.read_text())
            holder_host, holder_pid = str(holder["host"]), int(holder["pid"])
            requeued = slurm_job is not None and holder.get("slurm_job") == slurm_job
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError, KeyError, TypeError):
            holder_host, holder_pid, requeued = None, None, False  # unreadable (a crash while writing it)
        if (holder_host, holder_pid) == (host, os.getpid()):
            return None if dry else self._reenter()
        if holder_host is not None and not requeued and (holder_host != host or _alive(holder_pid)):
            raise RunLockError(
                f"train.out_dir={self.out_dir} is in use by pid {holder_pid} on {holder_host} "
                f"(lock {self.path}); wait for that run or stop it, or pick another train.out_dir"
                + ("; if it is gone, delete the lock file" if holder_host != host else ""))
        if dry:
            return None
        who = (f"SLURM job {slurm_job}'s previous run (pid {holder_pid} on {holder_host})" if requeued
               else f"pid {holder_pid}, no longer running" if holder_pid else "unreadable")
        log.warning("train.out_dir=%s: taking over a stale run lock (%s)", self.out_dir, who)
        try:
            os.unlink(self.path)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise

    def _reenter(self) -> None:
        # this process already holds it (a second Trainer in one interpreter, as in tests)
        os.unlink(self.path)

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                if json.loads(self.path.read_text()).get("pid") == os.getpid():
                    self.path.unlink()
            except (OSError, ValueError):
                pass
