"""Checkpoint directories that are written atomically and always leave a loadable one behind.

Layout under `<out_dir>/checkpoints/`:

    step-00000100/          complete checkpoints (each holds `manifest.json`, written last)
    step-00000200/
    .partial-step-00000300/ a save in progress (or one that crashed: ignored and cleaned up)
    latest                  text file naming the newest checkpoint, for people (never read back)

A save writes into the `.partial-` directory, then writes the manifest (listing every file with
its size and CRC-32), renames the directory into place (atomic on POSIX) and updates `latest`.
Resume scans the step directories and takes the newest that verifies, so a crash at any moment,
a damaged newest checkpoint or a stray pointer leaves an earlier loadable one in use. Every rank
may write into the directory (sharded formats such as torch.distributed.checkpoint or DeepSpeed);
only rank 0 creates, renames and prunes.
"""

import errno
import json
import logging
import os
import re
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

MANIFEST = "manifest.json"
FILES_KEY = "files"                    # manifest entry: every file's size and CRC-32
LATEST = "latest"
PARTIAL_PREFIX = ".partial-"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
log = logging.getLogger("metastate.checkpoint")


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


def step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def list_complete(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (not verified: see `newest_verified`)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=step_of)


# ------------------------------------------------------------------------------ verification
# The manifest lists every file of the checkpoint with its size, and the CRC-32 of each file up to
# CRC_MAX_BYTES (DCP's .metadata, rank*.pt, the shards of small models). A truncated or missing
# file shows in its size and a damaged small file in its CRC; big shards are not read back (rank 0
# would read every rank's shards at each save, and every rank all of them at each resume). zlib's
# CRC-32 streams at ~1.9 GiB/s on one core here, so the cost is bounded by the small files
# (docs/training.md, "What can go wrong").
CRC_MAX_BYTES = 64 << 20
_CHUNK = 1 << 22


def crc32_of(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def file_checksums(directory: Path) -> dict[str, dict]:
    """{relative path: {"size", "crc32" (None above CRC_MAX_BYTES)}} of every file under
    `directory` but the manifest."""
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.name != MANIFEST)
    listed = {}
    for p in files:
        size = p.stat().st_size
        listed[str(p.relative_to(directory))] = {
            "size": size, "crc32": crc32_of(p) if size <= CRC_MAX_BYTES else None}
    return listed


_verified: dict[tuple, str | None] = {}   # (path, manifest mtime and size) -> reason or None


def verify_checkpoint(path: Path) -> str | None:
    """Why `path` cannot be used (a missing, unreadable or damaged file), or None if it verifies.
    Checkpoints written before the manifest listed its files are checked for a readable manifest."""
    path = Path(path)
    try:
        stat = (path / MANIFEST).stat()
    except OSError:
        return f"no {MANIFEST} (an unfinished save)"
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _verified:
        _verified[key] = _check_files(path)
    return _verified[key]


def _check_files(path: Path) -> str | None:
    try:
        manifest = read_manifest(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"{MANIFEST} is unreadable ({' '.join(str(err).split())[:120]})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("step"), int):
        return f"{MANIFEST} holds no step number"
    for name, expected in (manifest.get(FILES_KEY) or {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected["size"]:
            return f"{name} has {size} bytes, the manifest says {expected['size']} (truncated or replaced)"
        if expected.get("crc32") and crc32_of(file) != expected["crc32"]:
            return f"{name} fails its CRC-32 check (damaged)"
    return None


def newest_verified(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under `root` that verifies, and one line per newer one skipped.
    The step directories are scanned: the `latest` pointer is for people, never trusted (a kill
    between publishing and moving it, or a damaged or hostile pointer, must not pick the wrong
    checkpoint)."""
    skipped = []
    for path in reversed(list_complete(Path(root))):
        reason = verify_checkpoint(path)
        if reason is None:
            return path, skipped
        skipped.append(f"{path}: {reason}")
    return None, skipped


_reported: set[str] = set()


def _report_skipped(skipped: list[str], chosen: Path | None) -> None:
    for line in skipped:
        if line not in _reported:  # preflight and the trainer both resolve the same checkpoint
            _reported.add(line)
            then = f"using {chosen.name}" if chosen else "no earlier checkpoint verifies"
            log.warning("checkpoint skipped, %s; %s", line, then)


def find_latest(root: Path) -> Path | None:
    """The newest complete checkpoint under `root` that verifies (None if there is none)."""
    return newest_verified(Path(root))[0]


def resolve_resume(resume: str, root: Path) -> Path | None:
    """Map `train.resume` (none | auto | PATH) to a checkpoint directory, or None for a fresh start.
    `auto` and a run or checkpoints/ folder give the newest checkpoint that verifies (newer,
    damaged ones are skipped with a warning naming each and why); an explicit step directory
    must verify.

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
        path, skipped = newest_verified(Path(root))
        _report_skipped(skipped, path)
        return path
    return _resolve_path(Path(resume), f"train.resume={resume}",
                         "a step-NNNNNNNN directory, its checkpoints/ folder, 'auto' or 'none'")


def find_checkpoint(source: str | Path) -> Path:
    """The checkpoint that `metastate eval/export/expand/generate SOURCE` means: a step directory
    (which must verify), or the newest that verifies in a checkpoints/ folder or run directory.

    Example:
        >>> find_checkpoint("runs/demo")      # -> runs/demo/checkpoints/step-00000300
    """
    hint = "a step-NNNNNNNN directory, its checkpoints/ folder or a run directory"
    path = _resolve_path(Path(source), str(source), hint)
    if path is None:
        raise CheckpointError(f"{source}: no complete checkpoint found; pass {hint}")
    return path


def _resolve_path(path: Path, label: str, hint: str) -> Path | None:
    if not path.exists():
        raise CheckpointError(f"{label}: no such checkpoint; pass {hint}")
    if path.is_dir() and not is_complete(path) and not _STEP_DIR.match(path.name):
        # a checkpoints/ folder, or a run directory that holds one
        skipped: list[str] = []
        for folder in (path, path / "checkpoints"):
            found, passed_over = newest_verified(folder)
            skipped += passed_over
            if found is not None:
                _report_skipped(skipped, found)
                return found
        if skipped:
            raise CheckpointError(f"{label}: no checkpoint verifies; newest: {skipped[0]}")
        return None
    if not is_complete(path):
        raise CheckpointError(
            f"{label}: not a complete checkpoint (no {MANIFEST}); it may be a crashed "
            f"save: pass an earlier step-NNNNNNNN directory or its run directory")
    reason = verify_checkpoint(path)
    if reason is not None:
        raise CheckpointError(f"{label}: {reason}; pass an earlier step-NNNNNNNN directory, or "
                              "the run directory to take the newest that verifies")
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
                error = _os_error(err) or _torch_write_failure(err, self.root)
                if error is None:
                    if self.is_rank0:  # a bug, not the disk: still leave no partial save behind
                        shutil.rmtree(partial, ignore_errors=True)
                    raise
            if self.any_rank(error is not None):
                if self.is_rank0:
                    shutil.rmtree(partial, ignore_errors=True)
                raise self._failure(step, final, error) from None
        return final

    def _prepare(self, partial: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()

    def _publish(self, step: int, partial: Path, final: Path, manifest: dict) -> None:
        files = file_checksums(partial)
        _write_text_atomically(partial / MANIFEST, json.dumps({"step": step, **manifest, FILES_KEY: files},
                                                              indent=2, default=str))
        if final.exists():  # re-saving a step after a resume: the new one wins
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync_dir(self.root)
        # Checkpoints numbered after this one belong to a timeline that was abandoned by resuming
        # from an earlier step: set them aside (never delete them) so that neither resume=auto
        # nor pruning mistakes them for this run's newest.
        for later in list_complete(self.root):
            if step_of(later) > step:
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
        free = _free_bytes(self.root)
        space = f"; {free / 2**20:.0f} MiB free there" if free is not None else ""
        return CheckpointError(f"could not write checkpoint step {step} to {final}: "
                               f"{error.strerror or error}{space}; {hint}; {kept}")

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


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


# torch.save reports a failed write (a full disk among others) as a RuntimeError from its zip
# writer ("[enforce fail at inline_container.cc:...] unexpected pos ..."), not as an OSError.
_TORCH_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "unexpected pos", "file write failed")
_NEARLY_FULL_BYTES = 64 << 20


def _torch_write_failure(err: BaseException, root: Path) -> OSError | None:
    text = str(err)
    if not isinstance(err, RuntimeError) or not any(s in text for s in _TORCH_WRITE_FAILURES):
        cause = err.__cause__ or err.__context__
        return _torch_write_failure(cause, root) if cause is not None else None
    free = _free_bytes(root)
    if free is not None and free < _NEARLY_FULL_BYTES:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return OSError(errno.EIO, f"write failed ({text.splitlines()[0][:160]})")
