import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

REPO = Path(__file__).resolve().parents[2]

# Short documents of two subsets, one with multi-byte characters (bytes != characters).
DOCS = [
    ("Wikipedia (en)", "The cat sat on the mat. " * 6),
    ("Github", "def add(a, b):\n    return a + b\n" * 3),
    ("Wikipedia (en)", "Zürich liegt am Zürichsee — schön. " * 4),
    ("Github", "for i in range(10):\n    print(i)\n"),
    ("Wikipedia (en)", "Short one."),
]

# One trained metastate checkpoint (DCP, MLflow run in its local sqlite store) for the CLI tests.
TRAIN = ["model.n_layer=1", "model.d_model=64", "model.head_size=32", "data.seq_len=32",
         "train.steps=2", "train.global_batch_size=2", "train.micro_batch_size=2",
         "train.eval_every=2", "train.eval_batches=1", "checkpoint.every=2", "tracking.backend=mlflow",
         "tracking.experiment=evals-test"]


def run_cli(args, timeout=600, cwd=REPO):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_docs(path: Path, docs=DOCS) -> Path:
    lines = "".join(json.dumps({"text": text, "meta": {"pile_set_name": name}}) + "\n"
                    for name, text in docs)
    path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode("utf-8")))
    return path


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> Path:
    """A directory holding val.jsonl.zst and test.jsonl.zst of DOCS."""
    root = tmp_path_factory.mktemp("eval-data")
    write_docs(root / "val.jsonl.zst")
    write_docs(root / "test.jsonl.zst", DOCS[:2])
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    proc = run_cli(["train", "smoke", *TRAIN, f"train.out_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
