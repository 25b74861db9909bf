import os
import pickle

import pytest
import torch

from training import safe_dcp


def test_round_trip_with_optimizer_values(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW([{"params": model.parameters(), "name": "decay", "lr_scale": 2.0}], lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 7, "note": "text"}
    safe_dcp.save(state, tmp_path / "ckpt")
    target = {"model": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}, "step": 0, "note": ""}
    safe_dcp.load(target, tmp_path / "ckpt")
    assert all(torch.equal(target["model"][k], v) for k, v in model.state_dict().items())
    assert target["step"] == 7 and target["note"] == "text"


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_metadata_is_refused_without_running_code(tmp_path):
    safe_dcp.save({"w": torch.ones(2)}, tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    refusal = "refers to posix.system, which DCP never writes"
    with pytest.raises(safe_dcp.UnsafeCheckpointError, match=refusal):
        safe_dcp.load({"w": torch.zeros(2)}, tmp_path / "ckpt")
    assert not marker.exists()


def test_dotted_global_inside_an_allowed_module_is_refused(tmp_path):
    safe_dcp.save({"w": torch.ones(2)}, tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    # protocol 4 STACK_GLOBAL with a dotted name: metadata module's `os.system`
    payload = (b"\x80\x04" + b"\x8c" + bytes([len("torch.distributed.checkpoint.metadata")])
               + b"torch.distributed.checkpoint.metadata" + b"\x8c\x09os.system"
               + b"\x93" + b"\x8c" + bytes([len(f"touch {marker}")]) + f"touch {marker}".encode()
               + b"\x85R.")
    (tmp_path / "ckpt" / ".metadata").write_bytes(payload)
    with pytest.raises(safe_dcp.UnsafeCheckpointError, match="os.system"):
        safe_dcp.load({"w": torch.zeros(2)}, tmp_path / "ckpt")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["shard", "metadata"])
def test_a_damaged_file_is_a_checkpoint_error_not_a_traceback(tmp_path, damage):
    # a checkpoint written before manifests listed their files gets no size check: the load
    # itself must still fail in one line
    from training.checkpointing import CheckpointError

    state = {"model": {"w": torch.arange(1000.0)}}
    safe_dcp.save(state, tmp_path / "ckpt")
    shard = next((tmp_path / "ckpt").glob("*.distcp"))
    target = (tmp_path / "ckpt" / ".metadata") if damage == "metadata" else shard
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    with pytest.raises((CheckpointError, safe_dcp.UnsafeCheckpointError)) as failure:
        safe_dcp.load({"model": {"w": torch.zeros(1000)}}, tmp_path / "ckpt")
    assert str(tmp_path / "ckpt") in str(failure.value) and "\n" not in str(failure.value)
