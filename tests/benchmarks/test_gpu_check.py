"""benchmarks/gpu_check.py on a machine without CUDA: its plumbing, so that a GPU's rare minutes are
never spent finding a bug in the script."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["env", "gpu_tests", "ops", "train", "loss_curve"]


def gpu_check(out: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def stages(out: Path) -> dict[str, dict]:
    return {s["stage"]: s for s in json.loads((out / "gpu_check.json").read_text())}


def test_without_cuda_every_cuda_stage_is_skipped_with_its_reason_and_exit_0(tmp_path):
    proc = gpu_check(tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = stages(tmp_path)
    assert list(found) == STAGES
    for name, stage in found.items():
        assert stage["status"] == "skipped", (name, stage)
        assert "needs CUDA" in stage["reason"]
        assert f"gpu_check: {name}: skipped (" in proc.stdout
    assert found["env"]["versions"]["torch"]
    assert "## ops (skipped: needs CUDA" in (tmp_path / "gpu_check.md").read_text()


def test_cpu_plumbing_runs_every_stage_and_writes_its_tables(tmp_path):
    proc = gpu_check(tmp_path, "--cpu-plumbing", "--sizes", "tiny", "--batch", "2", "--seq-len", "32",
                     "--timed-steps", "1", "--compile", "off", "--ops-shape", "1", "32", "2", "16",
                     "--train-seconds", "12")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = stages(tmp_path)
    assert [found[s]["status"] for s in STAGES[1:]] == ["ok"] * 4, found
    assert found["gpu_tests"]["rows"][0]["exit code"] == 0            # pytest -m gpu ran (all skip here)
    ops = found["ops"]["rows"]
    assert {(r["backend"], r["dtype"]) for r in ops} == {("chunked", "bfloat16"), ("chunked", "float32")}
    assert all(r["WKV-7 fwd+bwd ms"] > 0 for r in ops)
    train = found["train"]["rows"]
    assert [r["model"] for r in train] == ["metastate-tiny", "rwkv7-tiny", "transformer-tiny"]
    assert all(r["tokens/s"] > 0 for r in train)
    assert found["loss_curve"]["rows"] and found["loss_curve"]["steps"] >= 1
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| backend | dtype | WKV-7 fwd+bwd ms |" in table and "| metastate-tiny | False |" in table


def test_a_stage_over_its_time_is_cut_and_the_rest_is_still_reported(tmp_path):
    # building and stepping the 150m preset on CPU takes far longer than the 8 s budget
    proc = gpu_check(tmp_path, "--cpu-plumbing", "--stages", "train,loss_curve", "--sizes", "150m",
                     "--seq-len", "32", "--batch", "1", "--compile", "off", "--budget-s", "8")
    assert proc.returncode == 1
    found = stages(tmp_path)
    assert found["train"]["status"] == "timeout" and "timed out after 8 s" in found["train"]["reason"]
    assert found["loss_curve"] == {"stage": "loss_curve", "status": "skipped",
                                   "reason": "no time left in --budget-s", "rows": []}


def test_unknown_stage_is_one_line_and_exit_2(tmp_path):
    proc = gpu_check(tmp_path, "--stages", "env,warp")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "gpu_check: unknown stage(s) warp; choose from env, gpu_tests, ops, train, loss_curve"]


def test_make_gpu_kit_downloads_the_pinned_cp312_wheels_under_16_mb(tmp_path):
    kit = tmp_path / "kit"
    proc = subprocess.run(["make", "-s", "gpu-kit", f"GPU_KIT={kit}", f"PYTHON={sys.executable}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheels = sorted(p.name for p in kit.glob("*.whl"))
    assert [w.split("-")[0] for w in wheels] == ["fla_core", "omegaconf", "packaging", "tqdm", "zstandard"]
    assert any("cp312" in w and "manylinux" in w and "x86_64" in w for w in wheels)   # zstandard's binary
    assert sum(p.stat().st_size for p in kit.glob("*.whl")) < 16 * 2 ** 20
    assert "copy the repository with" in proc.stdout
