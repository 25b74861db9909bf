"""`metastate submit` and `metastate launch local`: checks and rendering on any machine, and real
jobs on a two-node SLURM cluster started on this machine (tests/launch/slurm_cluster.py)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from launch.run_config import load_run_config
from training.checkpointing import find_latest, list_complete, read_manifest
from training.monitors import MetricsLog

from .conftest import wait_for_job

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.n_layer=2", "model.d_model=64", "model.head_size=32", "data.seq_len=32",
        "train.micro_batch_size=2", "train.global_batch_size=4", "train.eval_every=0",
        "train.log_every=1", "optim.warmup_steps=1", "tracking.backend=none", "checkpoint.every=2",
        "checkpoint.keep_last=0"]
CPU_NODES = ["launch.request_gpus=false", "--gpus-per-node", "1", "--time", "10:00"]


def metastate(*args, env=None, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def losses(out_dir: Path) -> dict[int, float]:
    return {step: row["loss"] for step, row in MetricsLog.read(out_dir / "metrics.jsonl").items()}


def slurm_log(out_dir: Path, job_id: str, kind: str) -> str:
    path = out_dir / "slurm" / f"slurm-{job_id}.{kind}"
    return path.read_text() if path.exists() else f"(no {path})"


# ---------------------------------------------------------------------------------------------
# checks and rendering (no cluster needed)


def test_dry_run_prints_a_valid_script_and_the_config_and_submits_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: a dry run must not need one
    out = tmp_path / "run"
    code = main(["submit", "smoke", *TINY, f"train.out_dir={out}", "launch.signal_grace_s=300",
                 "train.global_batch_size=8",
                 "--nodes", "2", "--gpus-per-node", "2", "--partition", "gpu", "--account", "proj",
                 "--qos", "high", "--time", "2:00:00", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    script, config = captured.out.split("# ---- resolved config ----\n")
    for line in ["#SBATCH --nodes=2", "#SBATCH --requeue", "#SBATCH --signal=USR1@300",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --partition=gpu", "#SBATCH --account=proj",
                 "#SBATCH --qos=high", "#SBATCH --time=2:00:00", f"#SBATCH --output={out}/slurm/slurm-%j.out",
                 f"#SBATCH --error={out}/slurm/slurm-%j.err", "export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=300"]:
        assert line in script.splitlines(), line
    assert "--nnodes=2 --nproc-per-node=2" in script and "--rdzv-backend=c10d" in script
    assert script.rstrip().endswith("train.resume=auto")
    assert subprocess.run(["/bin/bash", "-n"], input=script, text=True).returncode == 0  # valid shell
    resolved = yaml.safe_load(config)
    assert resolved["launch"]["nodes"] == 2 and resolved["train"]["resume"] == "auto"
    assert "checks passed for 4 ranks" in captured.err
    assert not out.exists()  # issue 18 item 7: a dry run writes nothing


def test_zero_grace_sends_no_early_signal_but_torchrun_still_waits_for_the_checkpoint(tmp_path, capsys):
    code = main(["submit", "smoke", *TINY, f"train.out_dir={tmp_path / 'run'}", "launch.signal_grace_s=0",
                 "--dry-run"])
    script = capsys.readouterr().out.split("# ---- resolved config ----")[0]
    assert code == 0
    assert "--signal" not in script.replace("--signals-to-handle", "")
    assert "export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=30" in script.splitlines()


def test_a_user_template_is_rendered(tmp_path, capsys):
    template = tmp_path / "my.sbatch"
    template.write_text("#!/bin/bash\n#SBATCH --nodes={{NODES}}\n{{SBATCH_OPTIONS}}\n"
                        "srun my-wrapper {{PYTHON}} -m launch.cli train {{TRAIN_ARGS}}\n")
    code = main(["submit", "smoke", *TINY, f"train.out_dir={tmp_path / 'run'}", f"launch.template={template}",
                 "--nodes", "2", "--gpus-per-node", "1", "--dry-run"])
    script = capsys.readouterr().out.split("# ---- resolved config ----")[0]
    assert code == 0
    assert script.startswith("#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --time=01:00:00\n")
    assert f"srun my-wrapper {sys.executable} -m launch.cli train smoke " in script


def _unwritable(tmp_path: Path) -> str:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return f"train.out_dir={blocker / 'run'}"


def _bad_template(tmp_path: Path) -> str:
    path = tmp_path / "bad.sbatch"
    path.write_text("#SBATCH --nodes={{NODES}}\nsrun {{PYTHON}} {{TRAIN_ARG}}\n")
    return f"launch.template={path}"


@pytest.mark.parametrize("args, reason", [
    (["--nodes", "3"], "train.global_batch_size=4 is not a multiple of train.micro_batch_size=2 x 3"),
    (["parallel.dp=4"], "parallel.tp=1 x parallel.dp=4 = 4 differs from the world size 2; "
     "launch 4 processes or set "
     "parallel.dp=-1 (the job has 2 node(s) x 1 per node)"),
    (["data.train_path=/nonexistent/*.jsonl.zst"], "/nonexistent"),
    ([_unwritable], "cannot write checkpoints there"),
    (["--gpus-per-node", "8", "train.global_batch_size=32"],  # issue 18 item 7: 16 readers, 4 shards
     "deals whole shards to 16 data-parallel ranks x 1 workers = 16 readers"),
    ([_bad_template], "uses unknown placeholder(s) {{TRAIN_ARG}}"),
    (["train.resume=none"], "a submitted job always resumes with train.resume=auto"),
    (["--time", "1"], "launch.signal_grace_s (120) must be shorter than launch.time (1 = 60 s)"),
], ids=["ranks-vs-batch", "ranks-vs-parallel", "data-path", "checkpoint-dir", "shards", "template", "resume",
        "grace-vs-time"])
def test_dry_run_on_a_bad_config_fails_with_the_reason(tmp_path, capsys, args, reason):
    args = [a(tmp_path) if callable(a) else a for a in args]
    code = main(["submit", "smoke", *TINY, f"train.out_dir={tmp_path / 'run'}", "--nodes", "2",
                 "--gpus-per-node", "1", *args, "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("config error: ") and reason in captured.err, captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_submit_without_sbatch_names_the_alternative(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    code = main(["submit", "smoke", *TINY, f"train.out_dir={tmp_path / 'run'}", "--nodes", "1",
                 "--gpus-per-node", "1"])
    assert code == 2
    assert "sbatch is not on PATH" in capsys.readouterr().err


def test_launch_local_checks_the_run_before_starting_torchrun(tmp_path, capsys):
    code = main(["launch", "local", "smoke", *TINY, f"train.out_dir={tmp_path / 'run'}", "--nproc", "3"])
    assert code == 2
    assert "not a multiple of train.micro_batch_size=2 x 3" in capsys.readouterr().err
    # issue 18 item 7: 5 ranks on the 4-shard data died on every rank after the model was built
    code = main(["launch", "local", "smoke", *TINY, f"train.out_dir={tmp_path / 'run'}", "--nproc", "5",
                 "train.global_batch_size=10"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert "5 readers, but data.train_path=data/embedded/train/*.jsonl.zst has only 4 shards" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# real jobs


STEPS = 12
RUN = [*TINY, f"train.steps={STEPS}", "checkpoint.every=100"]


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory):
    """A 2-node x 1-rank job of STEPS steps that nothing interrupts: (run dir, job id, job fields)."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    out = cwd / "run"
    proc = metastate("submit", "smoke", *RUN, f"train.out_dir={out}", "--nodes", "2", *CPU_NODES,
                     env=slurm.env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    return out, job, wait_for_job(slurm, job)


@pytest.mark.slow
@pytest.mark.dist
def test_two_node_job_trains_and_a_resubmitted_job_resumes_its_checkpoint(slurm, uninterrupted):
    out, job, fields = uninterrupted
    assert fields["JobState"] == "COMPLETED", slurm_log(out, job, "err")[-3000:]
    assert fields["NumNodes"] == "2" and fields["NodeList"] == "node[1-2]"
    manifest = read_manifest(find_latest(out / "checkpoints"))
    assert manifest["step"] == STEPS and manifest["world_size"] == 2  # one rank on each node

    more = metastate("submit", "smoke", *RUN, f"train.out_dir={out}", f"train.steps={STEPS + 2}",
                     "--nodes", "2", *CPU_NODES, env=slurm.env, cwd=out.parent)
    assert more.returncode == 0, more.stderr
    job2 = more.stdout.strip()
    assert wait_for_job(slurm, job2)["JobState"] == "COMPLETED", slurm_log(out, job2, "err")[-3000:]
    resumed = f"resumed from {out / 'checkpoints' / f'step-{STEPS:08d}'} at step {STEPS}"
    assert resumed in slurm_log(out, job2, "err")
    assert list(losses(out)) == list(range(1, STEPS + 3))
    assert find_latest(out / "checkpoints").name == f"step-{STEPS + 2:08d}"


@pytest.mark.slow
@pytest.mark.dist
def test_sigusr1_checkpoints_requeues_and_the_requeued_job_ends_like_an_uninterrupted_run(
        slurm, uninterrupted, tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "preempted"
    submitted = metastate("submit", "smoke", *RUN, f"train.out_dir={out}", "tracking.backend=mlflow",
                          "launch.signal_grace_s=30", "--nodes", "2", *CPU_NODES, env=slurm.env, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    deadline = time.monotonic() + 180
    while not (out / "metrics.jsonl").exists() or len(losses(out)) < 3:
        assert time.monotonic() < deadline, slurm_log(out, job, "err")[-3000:]
        time.sleep(0.1)
    # what SLURM does launch.signal_grace_s before the time limit (--signal=USR1@grace)
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm.env, check=True, timeout=30)
    fields = wait_for_job(slurm, job)
    log = slurm_log(out, job, "out") + slurm_log(out, job, "err")
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", log[-3000:]
    assert f"requeueing SLURM job {job}" in log
    stopped_at = int(log.split(": SIGUSR1 received; checkpoint")[0].rsplit("step ", 1)[1])
    assert 3 <= stopped_at < STEPS
    saved = [p.name for p in list_complete(out / "checkpoints")]
    assert saved == [f"step-{stopped_at:08d}", f"step-{STEPS:08d}"]
    assert f"resumed from {out / 'checkpoints' / f'step-{stopped_at:08d}'} at step {stopped_at}" in log

    reference = {step: loss for step, loss in losses(uninterrupted[0]).items() if step <= STEPS}
    assert losses(out) == reference  # every step, the final one included, bit for bit

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(load_run_config("smoke").tracking.experiment)
    (mlflow_run,) = client.search_runs([experiment.experiment_id])  # one run, continued
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.tags["metastate.resumed"] == "true"
    history = client.get_metric_history(mlflow_run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # each step logged once
    assert {m.step: m.value for m in history} == pytest.approx(reference)


@pytest.mark.slow
@pytest.mark.dist
def test_launch_local_forwards_sigterm_so_ranks_checkpoint_and_stop(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "launch", "local", "smoke", *TINY,
                             "train.steps=500", "checkpoint.every=1000", f"train.out_dir={out}",
                             "--nproc", "2"],
                            cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "metrics.jsonl").exists() or len(losses(out)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # the exec'd torchrun agent gets it and forwards it
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = stdout + stderr
    assert "SIGTERM received; checkpoint" in output and "not requeued" in output, output[-3000:]
    latest = find_latest(out / "checkpoints")
    assert latest is not None and read_manifest(latest)["step"] == max(losses(out)) < 500
