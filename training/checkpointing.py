"""Checkpoint directories that are written atomically and always leave a loadable one behind.

Layout under `<out_dir>/checkpoints/`:

    step-00000100/          complete checkpoints (each holds `manifest.json`, written last)
    step-00000200/
    .partial-step-00000300/ a save in progress (or one that crashed: ignored and cleaned up)
    latest                  text file naming the newest complete checkpoint, replaced atomically

A save writes into the `.partial-` directory, then renames it into place (atomic on POSIX), and
only then updates `latest`. A crash at any moment therefore leaves the previous checkpoint and a
`latest` that names it (or, between the rename and the pointer update, a newer complete one that
`find_latest` also finds). Every rank may write into the directory (sharded formats such as
torch.distributed.checkpoint or DeepSpeed); only rank 0 creates, renames and prunes.
"""

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

MANIFEST = "manifest.json"
LATEST = "latest"
PARTIAL_PREFIX = ".partial-"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or found; the message says what to do."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def is_complete(path: Path) -> bool:
    """A checkpoint directory is complete once its manifest exists (the manifest is written last)."""
    return (path / MANIFEST).is_file()


def read_manifest(path: Path) -> dict:
    return json.loads((Path(path) / MANIFEST).read_text())


def list_complete(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def find_latest(root: Path) -> Path | None:
    """The checkpoint `latest` names when it is complete; otherwise (no pointer yet, or a crash
    left it naming a removed directory) the newest complete one."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if _STEP_DIR.match(named.name) and is_complete(named):
            return named
    complete = list_complete(root)
    return complete[-1] if complete else None


def resolve_resume(resume: str, root: Path) -> Path | None:
    """Map `train.resume` (none | auto | PATH) to a checkpoint directory, or None for a fresh start.

    Example:
        >>> resolve_resume("auto", Path("runs/demo/checkpoints"))   # None when nothing saved yet
    """
    if resume in ("", "none"):
        existing = list_complete(Path(root))
        if existing:  # a fresh run would prune the older run's newer-numbered checkpoints away
            raise CheckpointError(
                f"{root} already holds checkpoints up to {existing[-1].name} from an earlier run; "
                "pass train.resume=auto to continue it, or a new train.out_dir for a fresh run")
        return None
    if resume == "auto":
        return find_latest(root)
    path = Path(resume)
    if path.is_dir() and not is_complete(path) and not _STEP_DIR.match(path.name):
        # a checkpoints/ folder, or a run directory that holds one
        for folder in (path, path / "checkpoints"):
            latest = find_latest(folder)
            if latest is not None:
                return latest
    if not path.exists():
        raise CheckpointError(
            f"train.resume={resume}: no such checkpoint; pass a step-NNNNNNNN directory, its "
            "checkpoints/ folder, 'auto' or 'none'"
        )
    if not is_complete(path):
        raise CheckpointError(
            f"train.resume={resume}: not a complete checkpoint (no {MANIFEST}); it may be a crashed "
            "save: pass an earlier step-NNNNNNNN directory or train.resume=auto"
        )
    return path


class CheckpointManager:
    """Writes `step-N` directories atomically, moves `latest`, and keeps the newest `keep_last`.

    `barrier` synchronises ranks (torch.distributed.barrier in a multi-process run).

    Example:
        >>> manager = CheckpointManager(Path("runs/demo/checkpoints"), keep_last=3)
        >>> manager.save(100, lambda d: torch.save(state, d / "model.pt"), {"step": 100})
    """

    def __init__(self, root: Path, keep_last: int = 3, is_rank0: bool = True,
                 barrier: Callable[[], None] = lambda: None,
                 any_rank: Callable[[bool], bool] = lambda failed: failed):
        self.root = Path(root)
        self.keep_last = keep_last
        self.is_rank0 = is_rank0
        self.barrier = barrier
        self.any_rank = any_rank  # a collective: True on every rank if any rank passes True

    def save(self, step: int, write: Callable[[Path], None], manifest: dict) -> Path:
        """Run `write(partial_dir)` on every rank, then publish the checkpoint atomically. A
        failure on any rank (full disk, permissions) raises the same CheckpointError on all
        ranks, after removing the partial directory; earlier checkpoints are untouched."""
        final = self.root / step_dir_name(step)
        partial = self.root / f"{PARTIAL_PREFIX}{final.name}"
        phases = [
            lambda: self._prepare(partial) if self.is_rank0 else None,
            lambda: write(partial),
            lambda: self._publish(step, partial, final, manifest) if self.is_rank0 else None,
        ]
        for phase in phases:
            error = None
            try:
                phase()
            except BaseException as err:  # DCP raises CheckpointException, a BaseException
                error = _os_error(err)
                if error is None:
                    raise
            if self.any_rank(error is not None):
                if self.is_rank0:
                    shutil.rmtree(partial, ignore_errors=True)
                raise self._failure(step, final, error)
        return final

    def _prepare(self, partial: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()

    def _publish(self, step: int, partial: Path, final: Path, manifest: dict) -> None:
        _write_text_atomically(partial / MANIFEST, json.dumps({"step": step, **manifest}, indent=2,
                                                              default=str))
        if final.exists():  # re-saving a step after a resume: the new one wins
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync_dir(self.root)
        # Checkpoints numbered after this one belong to a timeline that was abandoned by resuming
        # from an earlier step: set them aside (never delete them) so that neither resume=auto
        # nor pruning mistakes them for this run's newest.
        for later in list_complete(self.root):
            if int(_STEP_DIR.match(later.name).group(1)) > step:
                os.replace(later, self.root / f"abandoned-{later.name}")
        _write_text_atomically(self.root / LATEST, final.name + "\n")
        self._prune()

    def _failure(self, step: int, final: Path, error: OSError | None) -> CheckpointError:
        last = find_latest(self.root)
        kept = f"the last good checkpoint {last} is intact" if last else "no earlier checkpoint exists"
        if error is None:
            return CheckpointError(f"could not write checkpoint step {step} to {final}: another rank "
                                   f"failed (its log names the cause); {kept}")
        hint = "free disk space or point train.out_dir elsewhere" if error.errno == errno.ENOSPC \
            else "check permissions and the filesystem"
        return CheckpointError(f"could not write checkpoint step {step} to {final}: "
                               f"{error.strerror or error}; {hint}; {kept}")

    def _prune(self) -> None:
        for stale in self.root.glob(f"{PARTIAL_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.keep_last > 0:
            for old in list_complete(self.root)[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err`, looking inside torch.distributed.checkpoint's per-rank report."""
    if isinstance(err, OSError):
        return err
    for failure in getattr(err, "failures", {}).values():
        inner = failure[0] if isinstance(failure, tuple) else getattr(failure, "exc", failure)
        if isinstance(inner, OSError):
            return inner
    cause = err.__cause__ or err.__context__
    return _os_error(cause) if cause is not None else None
