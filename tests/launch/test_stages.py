"""Staged (progressive) runs: `stages` in a run config is validated and shown resolved; `metastate
train` runs the stages in one out_dir, bitwise equal to stage 1, `metastate expand` and stage 2 by
hand, and resumes bitwise after SIGKILLs at any point, including during the expansion itself."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from launch.cli import main
from model.expand import leading_block
from tests.conftest import free_port, sigkill_after_step
from training.checkpointing import PARTIAL_PREFIX, find_latest, read_manifest
from training.export import load_checkpoint_weights
from training.monitors import MetricsLog

REPO = Path(__file__).resolve().parents[2]

SETTINGS = {
    "base": "smoke",
    "model": {"n_layer": 2, "d_model": 64, "head_size": 32},
    "data": {"seq_len": 32},
    "train": {"steps": 8, "micro_batch_size": 2, "global_batch_size": 4, "eval_every": 0, "log_every": 1},
    "optim": {"warmup_steps": 1, "rewarm_steps": 2},
    "tracking": {"backend": "none"},
    "checkpoint": {"every": 2, "keep_last": 0},
}
GROWN_MODEL = {"n_layer": 3, "d_model": 64, "head_size": 32, "d_state": 128}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """staged.yaml (2 layers to step 4, then grown to 3 layers and 2x state to step 8) and
    grown.yaml (the same run settings with the grown model, for the by-hand path)."""
    root = tmp_path_factory.mktemp("stages")
    grown = root / "grown.yaml"
    grown.write_text(yaml.safe_dump({**SETTINGS, "model": GROWN_MODEL}))
    staged = root / "staged.yaml"
    staged.write_text(yaml.safe_dump({**SETTINGS, "stages": [{"until_step": 4}, {"model": str(grown)}]}))
    return root


def run_cli(args):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def train(config, out, *overrides):
    proc = run_cli(["train", str(config), f"train.out_dir={out}", *overrides])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def reference(configs):
    """The staged run, uninterrupted."""
    out = configs / "reference"
    train(configs / "staged.yaml", out)
    return out


def losses(*run_dirs):
    rows = {}
    for run_dir in run_dirs:
        rows.update({step: row["loss"] for step, row in MetricsLog.read(run_dir / "metrics.jsonl").items()})
    return rows


def assert_same_final_weights(a_dir, b_dir):
    (a, _, a_path), (b, _, b_path) = (load_checkpoint_weights(d) for d in (a_dir, b_dir))
    assert a_path.name == b_path.name == "step-00000008"
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def test_config_show_prints_every_stage_resolved(configs, capsys):
    assert main(["config", "show", str(configs / "staged.yaml")]) == 0
    out = capsys.readouterr().out
    assert "# stage 1: steps 0 -> 4, model of the run (model.*)" in out
    assert f"# stage 2: steps 4 -> 8, model {configs / 'grown.yaml'} (grown from stage 1)" in out
    assert "n_layer=3, d_model=64, d_state=128" in out.split("# stage 2")[1]
    assert yaml.safe_load(out)["stages"][1]["model"] == str(configs / "grown.yaml")


@pytest.mark.parametrize("stages, message", [
    ("[{until_step: 4}, {model: metastate-tiny}]", "stages[1].model=metastate-tiny cannot grow from "
                                                   "stage 1's model: cannot expand"),
    ("[{until_step: 4}, {until_step: 2, model: G}, {model: G}]", "stages[1].until_step must be after "
                                                                "the previous stage's end (4)"),
    ("[{until_step: 9}, {model: G}]", "stages[0].until_step must be after the previous stage's end "
                                      "(0) and at most train.steps (8), got 9"),
    ("[{until_step: 4}, {modle: G}]", "unknown key 'stages[1].modle' on the command line; did you "
                                      "mean 'model'?"),
    ("[{until_step: 4}]", "stages needs at least two entries"),
    ("[{until_step: 4, model: G}, {model: G}]", "stages[0].model must be unset"),
])
def test_bad_stages_fail_in_one_line_with_exit_2(configs, capsys, stages, message):
    stages = stages.replace("G", str(configs / "grown.yaml"))
    assert main(["config", "show", str(configs / "staged.yaml"), f"stages={stages}"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert message in line


def test_a_staged_run_resumes_with_auto_only(configs, tmp_path, capsys):
    assert main(["train", str(configs / "staged.yaml"), f"train.out_dir={tmp_path}",
                 f"train.resume={tmp_path}"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "a run with stages resumes with train.resume=auto" in line


def test_staged_run_equals_stage_1_expand_and_stage_2_by_hand(configs, reference, tmp_path):
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    train(configs / "staged.yaml", stage1, "stages=[]", "train.stop_after=4")
    expand = run_cli(["expand", str(stage1), "--to", str(configs / "grown.yaml"), "--output", str(stage2)])
    assert expand.returncode == 0, expand.stderr[-3000:]
    train(stage2 / "config.yaml", stage2)

    assert losses(reference) == losses(stage1, stage2)
    assert sorted(losses(reference)) == list(range(1, 9))
    assert_same_final_weights(reference, stage2)
    final = find_latest(reference / "checkpoints")
    lineage = read_manifest(final)["lineage"]
    assert lineage["parent_step"] == 4
    assert lineage["parent_checkpoint"] == str((reference / "stages/1/checkpoints/step-00000004").resolve())
    assert read_manifest(final)["config"]["model"]["n_layer"] == 3
    assert yaml.safe_load((reference / "config.yaml").read_text())["stages"][1]["model"] == \
        str(configs / "grown.yaml")


# A process that SIGKILLs itself at a chosen point (CHAOS): inside the N-th checkpoint save (its
# DCP shards written, rank0.pt and manifest not), or right after the grown checkpoint is written.
DRIVER = """
import os, signal, sys
where, _, at = os.environ["CHAOS"].partition(":")
import training.expand as expand
import training.train_state as state
from launch.cli import main

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if where == "save":
    calls = []
    save_extras = state.save_rank_extras
    def save_rank_extras(directory, extras, env):
        calls.append(extras["step"])
        if len(calls) == int(at):
            die()
        save_extras(directory, extras, env)
    state.save_rank_extras = save_rank_extras
elif where == "usr1":      # SIGUSR1 (SLURM's preemption warning) while the model grows
    write = expand.write_grown_checkpoint
    def signal_then_write(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)
        return write(*args, **kwargs)
    expand.write_grown_checkpoint = signal_then_write
elif where == "grown":
    write = expand.write_grown_checkpoint
    def write_then_die(*args, **kwargs):
        write(*args, **kwargs)
        die()
    expand.write_grown_checkpoint = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def run_driver(config, out, chaos):
    return subprocess.run([sys.executable, "-c", DRIVER, "train", str(config), f"train.out_dir={out}",
                           "train.resume=auto"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CHAOS": chaos})


def killed(config, out, chaos):
    proc = run_driver(config, out, chaos)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def killed_after_step(config, out, step):
    sigkill_after_step(["train", str(config), f"train.out_dir={out}", "train.resume=auto"], step, REPO)


def test_kills_at_every_kind_of_point_resume_bitwise_equal(configs, reference, tmp_path):
    staged, out = configs / "staged.yaml", tmp_path / "chaos"
    killed(staged, out, "save:2")                # stage 1 saving step 4: step-2 is its newest
    assert find_latest(out / "stages/1/checkpoints").name == "step-00000002"
    killed(staged, out, "save:2")                # redoes step 3-4, then dies growing the model
    grown_root = out / "checkpoints"
    assert find_latest(out / "stages/1/checkpoints").name == "step-00000004"
    assert find_latest(grown_root) is None
    assert [p.name for p in grown_root.iterdir()] == [f"{PARTIAL_PREFIX}step-00000004"]
    killed(staged, out, "grown")                 # the half-written expansion is redone, then a kill
    assert "lineage" in read_manifest(find_latest(grown_root))
    killed_after_step(staged, out, 7)            # stage 2 from the grown checkpoint, killed at 7
    train(staged, out, "train.resume=auto")      # from step 6 to the end

    assert losses(out) == losses(reference)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 8   # each step once
    assert_same_final_weights(reference, out)


def test_progressive_tiny_config_finishes_with_the_grown_model_and_freezes_its_old_entries(tmp_path):
    out = tmp_path / "progressive"
    start = time.monotonic()
    proc = train("progressive-tiny", out, "checkpoint.every=5", "checkpoint.keep_last=0")
    assert time.monotonic() - start < 120
    assert f"checkpoints: {out / 'checkpoints'}" in proc.stdout

    final = find_latest(out / "checkpoints")
    manifest = read_manifest(final)
    assert final.name == "step-00000040" and manifest["config"]["model"]["n_layer"] == 3
    assert manifest["config"]["model"]["d_state"] == 128
    parent = out / "stages/1/checkpoints/step-00000020"
    assert manifest["lineage"]["parent_checkpoint"] == str(parent.resolve())
    assert manifest["lineage"]["freeze_old_steps"] == 5
    assert read_manifest(parent)["config"]["model"]["n_layer"] == 2

    # freeze_old_steps: 5: the parent's entries stay bit-identical for steps 21-25, then train
    old = load_checkpoint_weights(parent)[0]
    grown = load_checkpoint_weights(out / "checkpoints/step-00000020")[0]
    at_25 = load_checkpoint_weights(out / "checkpoints/step-00000025")[0]
    at_30 = load_checkpoint_weights(out / "checkpoints/step-00000030")[0]
    for name, tensor in old.items():
        assert torch.equal(at_25[name][leading_block(tensor.shape)], tensor), name
    assert not torch.equal(at_25["blocks.2.att.receptance.weight"], grown["blocks.2.att.receptance.weight"])
    name = "blocks.0.att.receptance.weight"
    assert not torch.equal(at_30[name][leading_block(old[name].shape)], old[name])


@pytest.mark.dist
def test_two_ranks_grow_in_a_child_process_and_finish_with_the_grown_model(configs, tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m",
                           "launch.cli", "train", str(configs / "staged.yaml"), f"train.out_dir={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = read_manifest(find_latest(out / "checkpoints"))
    assert final["step"] == 8 and final["world_size"] == 2 and final["config"]["model"]["n_layer"] == 3
    parent = out / "stages/1/checkpoints/step-00000004"
    assert final["lineage"]["parent_checkpoint"] == str(parent.resolve())
    assert sorted(losses(out)) == list(range(1, 9))


def test_sigusr1_during_the_growth_checkpoints_after_one_step_and_the_rerun_ends_bitwise(
        configs, reference, tmp_path):
    from training.preemption import PREEMPTED_EXIT_CODE

    staged, out = configs / "staged.yaml", tmp_path / "preempted"
    proc = run_driver(staged, out, "usr1")       # not fatal: recorded, acted on at the next step
    assert proc.returncode == PREEMPTED_EXIT_CODE, proc.stderr[-2000:]
    assert "step 5: SIGUSR1 received" in proc.stdout + proc.stderr
    assert find_latest(out / "checkpoints").name == "step-00000005"
    train(staged, out, "train.resume=auto")
    assert losses(out) == losses(reference)
    assert_same_final_weights(reference, out)



def growing(out_dir: Path) -> bool:
    """Whether a `python -m launch.stages` process (the grower) for `out_dir` is running."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"launch.stages" in args and any(str(out_dir).encode() in arg for arg in args):
            return True
    return False


@pytest.mark.slow
@pytest.mark.dist
def test_slurm_job_preempted_at_the_stage_boundary_requeues_and_finishes_like_a_local_run(
        slurm, configs, tmp_path):
    """Two nodes x one rank: SIGUSR1 (`scancel --signal=USR1`, what SLURM sends before the time
    limit) while rank 0's child process grows the model at the boundary. torchrun forwards it to
    each worker's process group, the grower included; the job checkpoints after stage 2's first
    step, requeues itself and ends equal to the same staged run on two local ranks."""
    from .conftest import wait_for_job

    staged = configs / "staged.yaml"
    run = [str(staged), "train.steps=16", "checkpoint.every=4"]
    local = tmp_path / "local"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m",
                           "launch.cli", "train", *run, f"train.out_dir={local}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "slurm-run"
    submitted = subprocess.run([sys.executable, "-m", "launch.cli", "submit", *run, f"train.out_dir={out}",
                                "launch.signal_grace_s=60", "launch.request_gpus=false", "--nodes", "2",
                                "--gpus-per-node", "1", "--time", "10:00"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300,
                               env={**slurm.env, "OMP_NUM_THREADS": "1"})
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()

    def log():
        return "".join((out / "slurm" / f"slurm-{job}.{kind}").read_text()
                       for kind in ("out", "err") if (out / "slurm" / f"slurm-{job}.{kind}").exists())

    deadline = time.monotonic() + 240
    while not growing(out):              # rank 0's child process is growing the model
        assert time.monotonic() < deadline, log()[-3000:]
        time.sleep(0.01)
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm.env, check=True, timeout=30)
    fields = wait_for_job(slurm, job, timeout_s=400)
    text = log()
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", text[-3000:]
    assert f"requeueing SLURM job {job}" in text
    stopped_at = int(text.split(": SIGUSR1 received")[0].rsplit("step ", 1)[1])
    assert 4 <= stopped_at < 16, text[-3000:]

    final = read_manifest(find_latest(out / "checkpoints"))
    assert final["step"] == 16 and final["world_size"] == 2 and final["config"]["model"]["n_layer"] == 3
    boundary = out / "stages/1/checkpoints/step-00000004"
    assert final["lineage"]["parent_checkpoint"] == str(boundary.resolve())
    assert losses(out) == losses(local)           # every step once, bit for bit
    assert sorted(losses(out)) == list(range(1, 17))
