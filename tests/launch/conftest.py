import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .slurm_cluster import SlurmCluster, SlurmUnavailable

REPO = Path(__file__).resolve().parents[2]

TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running two-node SLURM cluster (node1, node2 on this machine); pass `slurm.env` to
    subprocesses. Skips, saying what was tried, only when the daemons cannot run here."""
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as err:
        cluster.stop()
        pytest.skip(f"SLURM daemons cannot run on this machine (tried apt packages "
                    f"slurmctld/slurmd/slurm-client/munge, munged, slurmctld, 2x slurmd): {err}")
    yield cluster
    cluster.stop()


def job_fields(cluster: SlurmCluster, job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=cluster.env, capture_output=True,
                         text=True, timeout=30).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def wait_for_job(cluster: SlurmCluster, job_id: str, timeout_s: float = 240) -> dict[str, str]:
    """The job's `scontrol show job` fields once it reaches a terminal state (a requeued job
    passes through PENDING again and is waited for)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fields = job_fields(cluster, job_id)
        if fields.get("JobState") in TERMINAL_STATES:
            return fields
        time.sleep(1)
    subprocess.run(["scancel", job_id], env=cluster.env, timeout=30)
    raise AssertionError(f"job {job_id} not finished after {timeout_s}s: {job_fields(cluster, job_id)}")


@pytest.fixture(scope="session")
def pile_dir(tmp_path_factory) -> Path:
    """A directory in the Pile's layout as configs/pile/ expects it (docs/recipes.md): megatron/
    with one tiny preprocessed shard, val.jsonl.zst and test.jsonl.zst beside it."""
    from launch.cli import main

    root = tmp_path_factory.mktemp("pile")
    assert main(["preprocess", "--input", str(REPO / "data/embedded/train/00.jsonl.zst"),
                 "--output", str(root / "megatron"), "--format", "megatron", "--no-progress",
                 "--workers", "1"]) == 0
    for split in ("val", "test"):
        shutil.copy(REPO / f"data/embedded/{split}.jsonl.zst", root / f"{split}.jsonl.zst")
    return root
