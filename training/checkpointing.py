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
    """The newest complete checkpoint under `root` (what `latest` names after every clean save)."""
    # A crash between publishing a directory and moving the pointer leaves the pointer one
    # checkpoint behind; the newest complete directory is then the right answer.
    complete = list_complete(Path(root))
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
                 barrier: Callable[[], None] = lambda: None):
        self.root = Path(root)
        self.keep_last = keep_last
        self.is_rank0 = is_rank0
        self.barrier = barrier

    def save(self, step: int, write: Callable[[Path], None], manifest: dict) -> Path:
        """Run `write(partial_dir)` on every rank, then publish the checkpoint atomically."""
        final = self.root / step_dir_name(step)
        partial = self.root / f"{PARTIAL_PREFIX}{final.name}"
        try:
            if self.is_rank0:
                self.root.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir()
            self.barrier()
            write(partial)
            self.barrier()
            if self.is_rank0:
                _write_text_atomically(partial / MANIFEST, json.dumps({"step": step, **manifest},
                                                                      indent=2, default=str))
                if final.exists():  # re-saving a step after a resume: the new one wins
                    shutil.rmtree(final)
                os.replace(partial, final)
                _fsync_dir(self.root)
                _write_text_atomically(self.root / LATEST, final.name + "\n")
                self._prune()
            self.barrier()
        except OSError as err:
            if self.is_rank0:
                shutil.rmtree(partial, ignore_errors=True)
            last = find_latest(self.root)
            kept = f"the last good checkpoint {last} is intact" if last else "no earlier checkpoint exists"
            hint = "free disk space or point train.out_dir elsewhere" if err.errno == errno.ENOSPC \
                else "check permissions and the filesystem"
            raise CheckpointError(
                f"could not write checkpoint step {step} to {final}: {err.strerror or err}; {hint}; {kept}"
            ) from err
        return final

    def _prune(self) -> None:
        for stale in self.root.glob(f"{PARTIAL_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.keep_last > 0:
            for old in list_complete(self.root)[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
