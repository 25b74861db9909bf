import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from training.checkpointing import (
    LATEST,
    CheckpointError,
    CheckpointManager,
    crc32_of,
    find_checkpoint,
    find_latest,
    read_manifest,
    resolve_resume,
)

REPO = Path(__file__).resolve().parents[2]


def save_tensor(step):
    return lambda d: torch.save({"w": torch.full((3,), float(step))}, d / "model.pt")


def load_tensor(path):
    return torch.load(path / "model.pt", weights_only=True)["w"]


def test_save_publishes_directory_manifest_and_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    path = manager.save(10, save_tensor(10), {"config": {"a": 1}})
    assert path.name == "step-00000010"
    assert (tmp_path / LATEST).read_text().strip() == "step-00000010"
    size = (path / "model.pt").stat().st_size
    files = {"model.pt": {"size": size, "crc32": crc32_of(path / "model.pt")}}
    assert read_manifest(path) == {"step": 10, "config": {"a": 1}, "files": files}
    assert load_tensor(path).tolist() == [10.0] * 3
    assert not list(tmp_path.glob(".partial-*"))


def test_keep_last_prunes_oldest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3, 4):
        manager.save(step, save_tensor(step), {})
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000003", "step-00000004"]
    assert find_latest(tmp_path).name == "step-00000004"


def test_keep_last_zero_keeps_everything(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=0)
    for step in (1, 2, 3):
        manager.save(step, save_tensor(step), {})
    assert len(list(tmp_path.glob("step-*"))) == 3


def test_process_killed_mid_save_leaves_previous_checkpoint_loadable(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from training.checkpointing import CheckpointManager
        manager = CheckpointManager(Path({str(tmp_path)!r}), keep_last=3)
        manager.save(1, lambda d: torch.save({{"w": torch.ones(3)}}, d / "model.pt"), {{}})
        def half_written(d):
            (d / "model.pt").write_bytes(b"half a tensor")
            os.kill(os.getpid(), signal.SIGKILL)
        manager.save(2, half_written, {{}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert (tmp_path / ".partial-step-00000002").is_dir()
    assert (tmp_path / LATEST).read_text().strip() == "step-00000001"
    latest = resolve_resume("auto", tmp_path)
    assert latest.name == "step-00000001"
    assert load_tensor(latest).tolist() == [1.0] * 3
    # the next save cleans the crashed partial directory
    CheckpointManager(tmp_path).save(2, save_tensor(2), {})
    assert not list(tmp_path.glob(".partial-*"))
    assert find_latest(tmp_path).name == "step-00000002"


def test_resume_scans_step_directories_and_never_trusts_the_pointer(tmp_path):
    # issue 18 item 5: a kill between publish and pointer update resumed 5 steps back, and a
    # pointer outside the run directory was followed
    manager = CheckpointManager(tmp_path)
    manager.save(1, save_tensor(1), {})
    manager.save(2, save_tensor(2), {})
    elsewhere = tmp_path.parent / "elsewhere"
    CheckpointManager(elsewhere).save(9, save_tensor(9), {})
    for pointer in (b"step-00000001\n", b"step-00000007\n", b"../elsewhere/step-00000009\n",
                    str(elsewhere / "step-00000009").encode(), b"\xff\xfe\x00binary"):
        (tmp_path / LATEST).write_bytes(pointer)
        assert resolve_resume("auto", tmp_path) == tmp_path / "step-00000002"


def test_resuming_from_an_earlier_step_sets_the_abandoned_timeline_aside(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (100, 200, 300):
        manager.save(step, save_tensor(step), {})
    # a rollback: training resumed from step-200 (step-100 was pruned) and now saves step 250
    path = manager.save(250, save_tensor(250), {})
    assert path.exists() and load_tensor(path).tolist() == [250.0] * 3
    assert resolve_resume("auto", tmp_path).name == "step-00000250"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "abandoned-step-00000300", "step-00000200", "step-00000250"]
    assert load_tensor(tmp_path / "abandoned-step-00000300").tolist() == [300.0] * 3  # kept, not lost


def test_full_disk_inside_torch_distributed_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    from training.distributed import DistEnv
    from training.train_state import save_train_state

    env = DistEnv(0, 1, 0, torch.device("cpu"))
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters())
    manager = CheckpointManager(tmp_path)
    manager.save(1, lambda d: save_train_state(d, model, opt, {"step": 1}, env), {})

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)  # DCP fsyncs every file it writes
    with pytest.raises(CheckpointError, match=r"No space left on device.*step-00000001 is intact"):
        manager.save(2, lambda d: save_train_state(d, model, opt, {"step": 2}, env), {})
    monkeypatch.undo()
    assert not list(tmp_path.glob(".partial-*"))
    assert resolve_resume("auto", tmp_path).name == "step-00000001"


def test_a_failure_on_another_rank_fails_this_rank_too(tmp_path):
    calls = []

    def any_rank(failed):  # the second phase (the write) failed on some other rank
        calls.append(failed)
        return failed or len(calls) == 2

    manager = CheckpointManager(tmp_path, any_rank=any_rank)
    with pytest.raises(CheckpointError, match="another rank failed"):
        manager.save(1, save_tensor(1), {})
    assert calls == [False, False] and not list(tmp_path.glob(".partial-*"))
    assert resolve_resume("auto", tmp_path) is None


def test_full_disk_reports_and_keeps_last_good_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(1, save_tensor(1), {})

    def disk_full(d):
        (d / "model.pt").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    expected = r"No space left on device; \d+ MiB free there; free disk space.*step-00000001 is intact"
    with pytest.raises(CheckpointError, match=expected):
        manager.save(2, disk_full, {})
    assert not list(tmp_path.glob(".partial-*"))
    assert resolve_resume("auto", tmp_path).name == "step-00000001"


def test_resolve_resume_modes(tmp_path):
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume("auto", tmp_path / "nothing-yet") is None
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_resume(str(tmp_path / "missing"), tmp_path)
    broken = tmp_path / "step-00000005"
    broken.mkdir()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_resume(str(broken), tmp_path)
    run_dir = tmp_path / "run"
    CheckpointManager(run_dir / "checkpoints").save(7, save_tensor(7), {})
    assert resolve_resume(str(run_dir), tmp_path).name == "step-00000007"
    assert resolve_resume(str(run_dir / "checkpoints"), tmp_path).name == "step-00000007"
    with pytest.raises(CheckpointError, match="already holds checkpoints up to step-00000007.*resume=auto"):
        resolve_resume("none", run_dir / "checkpoints")


def _three_checkpoints(root):
    manager = CheckpointManager(root, keep_last=0)
    for step in (2, 4, 6):
        manager.save(step, save_tensor(step), {"config": {}})
    return root / "step-00000006"


def _truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _flip_a_byte(file):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    (lambda d: _truncate(d / "model.pt"), "model.pt has .* bytes, the manifest says"),
    (lambda d: _flip_a_byte(d / "model.pt"), "model.pt fails its CRC-32 check"),
    (lambda d: (d / "model.pt").unlink(), "model.pt is missing"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json is unreadable"),
    (lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe\x00"), "manifest.json is unreadable"),
])
def test_resume_falls_back_past_a_damaged_newest_checkpoint_and_says_why(tmp_path, caplog, damage, reason):
    # issue 18 item 4: a damaged newest checkpoint stopped everything
    newest = _three_checkpoints(tmp_path)
    damage(newest)
    with caplog.at_level("WARNING", logger="metastate.checkpoint"):
        assert resolve_resume("auto", tmp_path) == tmp_path / "step-00000004"
    assert find_latest(tmp_path) == tmp_path / "step-00000004"
    assert find_checkpoint(tmp_path) == tmp_path / "step-00000004"   # eval/export/expand
    (line,) = [r.getMessage() for r in caplog.records]
    assert "step-00000006" in line and "using step-00000004" in line
    assert __import__("re").search(reason, line), line
    with pytest.raises(CheckpointError, match="step-00000006: " + reason):
        find_checkpoint(newest)  # an explicitly named checkpoint must verify


def test_a_failed_torch_write_is_one_line_with_free_space_and_leaves_no_partial(tmp_path, monkeypatch):
    # issue 18 item 3: torch.save on a full disk raised RuntimeError (not an OSError), which escaped
    # as a traceback and left .partial-step-N filling the disk
    manager = CheckpointManager(tmp_path)
    manager.save(2, save_tensor(2), {})

    def full_disk(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as failure:
        manager.save(4, lambda d: torch.save({}, d / "model.pt"), {})
    message = str(failure.value)
    assert "\n" not in message and "step 4" in message and str(tmp_path / "step-00000004") in message
    assert "MiB free there" in message and "step-00000002 is intact" in message
    assert not list(tmp_path.glob(".partial-*"))
    monkeypatch.undo()
    assert find_latest(tmp_path) == tmp_path / "step-00000002"


def test_big_files_are_listed_by_size_only(tmp_path, monkeypatch):
    import training.checkpointing as checkpointing

    monkeypatch.setattr(checkpointing, "CRC_MAX_BYTES", 100)
    (tmp_path / "small.bin").write_bytes(b"x" * 100)
    (tmp_path / "big.bin").write_bytes(b"x" * 101)
    listed = checkpointing.file_checksums(tmp_path)
    assert listed["small.bin"]["crc32"] is not None and listed["big.bin"] == {"size": 101, "crc32": None}
