"""`metastate eval`, `generate` and `runs compare` end to end on a trained checkpoint."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from mlflow import MlflowClient
from omegaconf import OmegaConf

from evals.checkpoint import load_for_eval
from launch.cli import main
from model import ModelConfig, build_model, iter_generate, model_preset, model_size
from ops import OpsConfig
from tests.evals.conftest import DOCS, run_cli
from training.tracking import MlflowTracker, default_tracking_uri

pytestmark = pytest.mark.slow


def cli(args, capsys):
    """`metastate ARGS` in this process (no interpreter start-up) with its output captured."""
    code = main(args)
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def test_eval_reports_subsets_bpb_positions_and_logs_to_the_run(trained_run, eval_data, tmp_path):
    png = tmp_path / "positions.png"
    proc = run_cli(["eval", str(trained_run), "--data", str(eval_data), "--context", "32",
                    "--json", "--mlflow", "--positions-png", str(png), "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["step"] == 2 and out["family"] == "metastate" and out["context"] == 32
    overall = out["overall"]
    assert overall["documents"] == len(DOCS)
    assert overall["bytes"] == sum(len(text.encode("utf-8")) for _, text in DOCS)
    assert overall["bytes"] > sum(len(text) for _, text in DOCS)   # the umlauts are 2 bytes each
    assert math.isclose(overall["bits_per_byte"], overall["loss"] * overall["tokens"] / math.log(2)
                        / overall["bytes"], rel_tol=1e-9)
    assert set(out["subsets"]) == {"Wikipedia (en)", "Github"}
    assert sum(s["tokens"] for s in out["subsets"].values()) == overall["tokens"]
    assert any(b["beyond_context"] for b in out["positions"])      # documents longer than 32
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads(next((trained_run / "checkpoints").glob("step-*/manifest.json")).read_text())
    run = MlflowClient(default_tracking_uri(trained_run)).get_run(manifest["mlflow_run_id"])
    assert math.isclose(run.data.metrics["eval/val/bpb"], overall["bits_per_byte"], rel_tol=1e-9)
    assert "eval/val/Wikipedia _en_/loss" in run.data.metrics


def test_sharded_and_consolidated_checkpoints_give_the_same_numbers(trained_run, eval_data, tmp_path,
                                                                    capsys):
    exported = tmp_path / "model.safetensors"
    assert cli(["export", str(trained_run), "--output", str(exported)], capsys).returncode == 0
    results = []
    for source in (trained_run, exported):
        proc = cli(["eval", str(source), "--data", str(eval_data), "--split", "test", "--json",
                    "--context", "64", "--no-progress"], capsys)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results.append(json.loads(proc.stdout)["overall"])
    assert results[0]["documents"] == 2
    assert math.isclose(results[0]["loss"], results[1]["loss"], rel_tol=1e-6)
    bad = cli(["eval", str(exported), "--data", str(eval_data), "--mlflow", "--no-progress"], capsys)
    assert bad.returncode == 2 and "names no MLflow run" in bad.stderr
    missing = cli(["eval", str(tmp_path / "nope"), "--data", str(eval_data)], capsys)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_generate_streams_text_and_greedy_is_reproducible(trained_run, capsys):
    args = ["generate", str(trained_run), "--prompt", "The cat", "--max-new-tokens", "12",
            "--temperature", "0"]
    first, second = cli(args, capsys), cli(args, capsys)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.startswith("The cat") and len(first.stdout) > len("The cat\n")
    assert first.stdout == second.stdout
    loaded = load_for_eval(trained_run)
    assert loaded.step == 2 and not loaded.model.training


@pytest.mark.parametrize("name", ["metastate-tiny", "rwkv7-tiny", "transformer-tiny"])
def test_generation_is_lazy_and_recurrent_state_stays_constant(name):
    torch.manual_seed(0)
    model = build_model(model_preset(name), OpsConfig(backend="chunked"))
    sizes, one_token_step = [], model.step
    model.register_forward_hook(lambda module, inputs, output: sizes.append(output[1].nbytes()))

    def recorded_step(tokens, state):
        logits, new_state = one_token_step(tokens, state)
        sizes.append(new_state.nbytes())
        return logits, new_state

    model.step = recorded_step
    tokens = iter_generate(model, [1, 2, 3, 4], max_new_tokens=20, temperature=0)
    next(tokens)
    assert len(sizes) == 1              # the first token arrives after the prompt pass alone
    list(tokens)
    assert len(sizes) == 20             # then one one-token step per further token
    if name == "transformer-tiny":
        assert sizes[-1] > sizes[0]     # the KV cache grows
    else:
        assert len(set(sizes)) == 1     # constant memory


def _logged_run(store, run_dir, name, family, val_loss, tokens_per_s, bpb=None):
    """A run logged the way the trainer logs one (params, family/preset tags, metrics)."""
    cfg = OmegaConf.create({"backend": "mlflow", "uri": store, "experiment": "cmp", "run_name": name})
    tracker = MlflowTracker(cfg, run_dir)
    params = {"model.family": family, "model.n_layer": "2", "model.d_model": "64",
              "model.head_size": "16", "model.vocab_size": "256", "train.global_batch_size": "4",
              "data.seq_len": "32"}
    tracker.start(params=params, tags={"family": family, "preset": "paper"})
    for step in (1, 2, 3):
        tracker.log_metrics(step, {"loss": 6.0 - step, "tokens_per_s": tokens_per_s})
    tracker.log_metrics(3, {"val_loss": val_loss, **({"eval/val/bpb": bpb} if bpb else {})})
    tracker.finish()


def test_runs_compare_tables_runs_by_name_experiment_and_directory(trained_run, tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _logged_run(store, tmp_path, "ms", "metastate", 3.25, 1000.0, bpb=1.5)
    _logged_run(store, tmp_path, "tf", "transformer", 3.5, 2000.0)
    png = tmp_path / "curves.png"
    proc = cli(["runs", "compare", "--experiment", "cmp", "--tracking-uri", store, "--png", str(png),
                "--json"], capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["family"]: r for r in json.loads(proc.stdout)["runs"]}
    assert rows["metastate"]["val_loss"] == 3.25 and rows["metastate"]["bpb"] == 1.5
    assert rows["transformer"]["bpb"] is None and rows["transformer"]["tokens_per_s"] == 2000.0
    assert rows["metastate"]["tokens"] == 3 * 4 * 32
    for family, row in rows.items():
        config = ModelConfig(family, vocab_size=256, n_layer=2, d_model=64, head_size=16)
        assert row["params"] == model_size(config).total_params
    assert png.read_bytes()[:4] == b"\x89PNG"
    table = cli(["runs", "compare", "ms", str(trained_run), "--tracking-uri", store,
                 "--png", str(tmp_path / "b.png")], capsys)
    assert table.returncode == 0, table.stderr[-2000:]
    header, *lines = table.stdout.splitlines()[:3]
    assert header.split()[:5] == ["run", "family", "preset", "params", "tokens"]
    assert "metastate" in lines[0] and "smoke" in lines[1]
    unknown = cli(["runs", "compare", "nosuchrun", "--tracking-uri", store], capsys)
    assert unknown.returncode == 2 and "no run with id or name 'nosuchrun'" in unknown.stderr
