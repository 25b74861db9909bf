"""Issue 18 items 6 and 10: every expected failure of every command is one line on stderr naming
the thing and the fix, exit code 2, no traceback. The rows run in-process through `main` (the
function `python -m launch.cli` exits with), most failing in config checks or preflight before a
model is built; two rows run as real processes to check what a shell sees."""

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from launch.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.n_layer=2", "model.d_model=64", "model.head_size=32", "data.seq_len=32",
        "train.micro_batch_size=2", "train.global_batch_size=4", "train.eval_every=0",
        "tracking.backend=none", "train.log_every=1", "optim.warmup_steps=1"]
TRAIN = ["train", "smoke", *TINY]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A trained 2-step run plus every kind of bad file a row needs."""
    root = tmp_path_factory.mktemp("bad-inputs")
    run = root / "run"
    assert main([*TRAIN, "train.steps=2", "checkpoint.every=1", "checkpoint.keep_last=0",
                 f"train.out_dir={run}"]) == 0
    (root / "binary.yaml").write_bytes(b"\x00\xff\xfe\x80 not text")
    (root / "empty.yaml").write_text("")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "evil.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    (root / "bad-data").mkdir()
    (root / "bad-data" / "00.jsonl.zst").write_bytes(b"this is not zstd")
    # a hostile checkpoint: DCP metadata that unpickles os.system, with a manifest made to match
    evil = root / "evil-run"
    shutil.copytree(run, evil)
    step = evil / "checkpoints" / "step-00000002"
    (step / "dcp" / ".metadata").write_bytes(pickle.dumps(os.system))
    _refresh_manifest(step, "dcp/.metadata")
    # a run whose only checkpoints are damaged
    broken = root / "broken-run"
    shutil.copytree(run, broken)
    for step in (broken / "checkpoints").glob("step-*"):
        shard = next((step / "dcp").glob("*.distcp"))
        shard.write_bytes(shard.read_bytes()[:100])
    held = root / "held"  # a run directory another live process trains into
    held.mkdir()
    (held / ".run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))
    return root


def _refresh_manifest(step: Path, name: str) -> None:
    manifest = json.loads((step / "manifest.json").read_text())
    data = (step / name).read_bytes()
    manifest["files"][name] = {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}
    (step / "manifest.json").write_text(json.dumps(manifest))


# (argv with {root} for the fixture directory, exit code, a phrase the one line must hold)
ROWS = [
    # config: keys, values, files
    ([*TRAIN, "train.stpes=3"], "did you mean 'train.steps'"),
    (["train", "{root}/binary.yaml"], "binary.yaml: 'utf-8' codec can't decode"),
    (["train", "{root}/empty.yaml"], "empty.yaml is empty"),
    (["train", "{root}/list.yaml"], "must hold a mapping of sections"),
    (["train", "{root}/missing.yaml"], "config file '{root}/missing.yaml' not found"),
    (["train", "no-such-preset"], "no preset named 'no-such-preset'"),
    ([*TRAIN, "optim.lr=inf"], "optim.lr must be a finite number, got inf"),
    ([*TRAIN, "optim.lr=0"], "optim.lr must be > 0, got 0"),
    ([*TRAIN, "optim.lr=-1e-3"], "optim.lr must be > 0"),
    ([*TRAIN, "optim.lr=.nan"], "optim.lr must be a finite number, got nan"),
    ([*TRAIN, "train.steps=99999999999999999999999"], "train.steps=99999999999999999999999 is out of range"),
    ([*TRAIN, "train.max_bad_steps=0"], "train.max_bad_steps must be >= 1, got 0"),
    ([*TRAIN, "model.vocab_size=10"], "model.vocab_size (10) must hold the tokenizer's 50277"),
    ([*TRAIN, "train.steps=0"], "train.steps must be >= 1"),
    ([*TRAIN, "model.family=gpt"], "model.family must be one of"),
    ([*TRAIN, "optim.betas=[0.9]"], "optim.betas must be two numbers"),
    ([*TRAIN, "train.steps"], "override 'train.steps' is not key=value"),
    # preflight: data, shards, resume target
    ([*TRAIN, "train.eval_every=5", "data.val_path={root}/no-val.jsonl.zst", "train.out_dir={root}/o0"],
     "data.val_path={root}/no-val.jsonl.zst: {root}/no-val.jsonl.zst does not exist; point data.val_path"),
    ([*TRAIN, "data.train_path=/nonexistent", "train.out_dir={root}/o1"],
     "data.train_path=/nonexistent: no such file or directory"),
    ([*TRAIN, "data.num_workers=8", "train.out_dir={root}/o2"],
     "1 data-parallel ranks x 8 workers = 8 readers, but data.train_path"),
    ([*TRAIN, "train.resume=/nonexistent", "train.out_dir={root}/o3"],
     "train.resume=/nonexistent: no such checkpoint"),
    ([*TRAIN, "train.out_dir={root}/run"], "already holds checkpoints up to step-00000002"),
    ([*TRAIN, "train.resume={root}/broken-run/checkpoints/step-00000002", "train.out_dir={root}/o4"],
     "has 100 bytes, the manifest says"),
    (["launch", "local", "smoke", *TINY, "--nproc", "5", "train.global_batch_size=10",
      "train.out_dir={root}/o5"], "5 readers, but data.train_path"),
    (["submit", "smoke", *TINY, "--nodes", "2", "--gpus-per-node", "8", "train.global_batch_size=32",
      "train.out_dir={root}/o6", "--dry-run"], "16 readers, but data.train_path"),
    # the run directory: unwritable, or in use
    ([*TRAIN, "train.out_dir=/proc/x"], "train.out_dir=/proc/x: cannot create it"),
    ([*TRAIN, "train.out_dir={root}/held"], "is in use by pid"),
    # data that turns out bad only once read
    ([*TRAIN, "data.train_path={root}/bad-data", "train.out_dir={root}/o7"], "bad-data"),
    # checkpoints for eval / export / generate / expand (item 10: their own words, no prefix twice)
    (["eval", "/nonexistent"], "eval: /nonexistent: no such checkpoint; pass a step-NNNNNNNN "
     "directory, its checkpoints/ folder or a run directory"),
    (["export", "/nonexistent"], "export: /nonexistent: no such checkpoint"),
    (["generate", "/nonexistent", "--prompt", "x"], "generate: /nonexistent: no such checkpoint"),
    (["expand", "/nonexistent", "--to", "metastate-450m", "--output", "{root}/o8"],
     "expand: /nonexistent: no such checkpoint"),
    (["eval", "{root}/evil.safetensors"], "evil.safetensors: not a safetensors file"),
    (["generate", "{root}/evil.safetensors", "--prompt", "x"], "not a safetensors file"),
    (["export", "{root}/evil-run"], "refers to posix.system, which DCP never writes"),
    ([*TRAIN, "train.resume={root}/evil-run", "train.out_dir={root}/o10"], "refusing to load it"),
    (["eval", "{root}/evil-run"], "refusing to load it"),
    (["export", "{root}/broken-run"], "no checkpoint verifies"),
    (["generate", "{root}/run", "--prompt", "x", "--top-p", "2"], "generate: top_p=2.0 must be in (0, 1]"),
    (["eval", "{root}/run", "--stride", "100000"], "--stride=100000 must not exceed"),
    (["eval", "{root}/run", "--data", "/nonexistent/val.jsonl.zst"], "/nonexistent/val.jsonl.zst"),
    (["runs", "compare", "{root}/o9"], "{root}/o9"),
]


@pytest.mark.parametrize("argv, phrase", ROWS,
                         ids=[" ".join(r[0][:3]) + f" #{i}" for i, r in enumerate(ROWS)])
def test_a_bad_input_is_one_line_and_exit_code_2(files, capsys, caplog, argv, phrase):
    argv = [a.format(root=files) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert not [r for r in caplog.records if r.exc_info], "a traceback went to the log"
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert phrase.format(root=files) in lines[0], lines[0]


def test_table_covers_at_least_30_inputs_and_every_command():
    assert len(ROWS) >= 30
    assert {row[0][0] for row in ROWS} >= {"train", "launch", "submit", "eval", "export", "generate",
                                            "expand", "runs"}


@pytest.mark.parametrize("args", [["train", "{root}/binary.yaml"], ["export", "{root}/evil-run"]])
def test_a_real_process_prints_one_line_and_exits_2(files, args):
    proc = subprocess.run([sys.executable, "-m", "launch.cli", *[a.format(root=files) for a in args]],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
