"""configs/pile/: every recipe passes `metastate submit --dry-run` for a 4 x 8 GPU job and
`config show`, needs its data location set once, and docs/recipes.md's numbers are its own."""

import dataclasses
import os
import re
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from launch.model_commands import preset_info
from model.presets import model_preset

REPO = Path(__file__).resolve().parents[2]
RECIPES = [f"{family}-{size}" for size in ("150m", "450m")
           for family in ("metastate", "rwkv7", "transformer")]
PEAK_BF16_FLOPS = 989.4e12             # H100 SXM and H200 SXM, dense bf16 (docs/recipes.md)
MFU = 0.40
SUBMIT = ["--nodes", "4", "--gpus-per-node", "8", "--time", "24:00:00", "--dry-run"]


def recipe(name: str) -> str:
    return str(REPO / "configs/pile" / f"{name}.yaml")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_submits_as_a_dry_run_on_4_nodes_of_8_gpus(name, pile_dir, capsys, monkeypatch):
    monkeypatch.delenv("METASTATE_PILE", raising=False)
    monkeypatch.chdir(REPO)
    code = main(["submit", recipe(name), *SUBMIT, f"data.train_path={pile_dir / 'megatron'}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    script, config = captured.out.split("# ---- resolved config ----\n")
    assert "#SBATCH --nodes=4" in script.splitlines() and "--nproc-per-node=8" in script
    assert "checks passed for 32 ranks" in captured.err
    resolved = yaml.safe_load(config)
    assert resolved["model"] == dataclasses.asdict(model_preset(name))
    assert Path(resolved["data"]["val_path"]).resolve() == pile_dir / "val.jsonl.zst"
    assert resolved["data"]["seq_len"] * resolved["train"]["global_batch_size"] == 524_288
    assert resolved["train"]["out_dir"] == f"runs/pile/{name}"


@pytest.mark.parametrize("name", RECIPES)
def test_config_show_resolves_the_recipe_from_the_environment_variable(name, pile_dir, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv("METASTATE_PILE", str(pile_dir))
    assert main(["config", "show", recipe(name)]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["data"]["train_path"] == f"{pile_dir}/megatron"
    assert shown["model"] == dataclasses.asdict(model_preset(name))
    assert f"  n_layer: {shown['model']['n_layer']}  # model.preset={name} in " in out


def test_a_recipe_without_the_pile_location_fails_in_one_line_naming_both_fixes(capsys, monkeypatch,
                                                                                 tmp_path):
    monkeypatch.delenv("METASTATE_PILE", raising=False)
    for command in (["train"], ["submit", "--dry-run", "--nodes", "1"]):
        assert main([*command, recipe("rwkv7-150m"), f"train.out_dir={tmp_path / 'run'}"]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert "needs the environment variable METASTATE_PILE" in line
        assert "pass data.train_path=... on the command line" in line
    assert not (tmp_path / "run").exists()


def test_config_show_without_the_pile_location_shows_the_run_and_says_what_is_unset(capsys, monkeypatch):
    monkeypatch.delenv("METASTATE_PILE", raising=False)
    assert main(["config", "show", recipe("progressive-150m-450m")]) == 0
    captured = capsys.readouterr()
    assert "# stage 2: steps 9537 -> 28610, model metastate-450m (grown from stage 1)" in captured.out
    assert yaml.safe_load(captured.out)["data"]["train_path"] == "$METASTATE_PILE/megatron"
    (note,) = captured.err.splitlines()
    assert note.startswith("note: the environment variable METASTATE_PILE is not set")
    assert "METASTATE_PILE" not in os.environ      # the placeholder is not left behind


def doc_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (REPO / "docs/recipes.md").read_text().splitlines():
        match = re.match(r"\| `([a-z0-9-]+)` \|(.*)\|$", line)
        if match:
            rows[match[1]] = [cell.strip() for cell in match[2].split("|")]
    return rows


def test_docs_recipes_table_matches_model_info_and_the_configs(monkeypatch):
    from launch.run_config import load_run_config

    monkeypatch.setenv("METASTATE_PILE", "/nonexistent")  # resolving needs no files
    rows = doc_rows()
    assert sorted(rows) == sorted(RECIPES)
    for name in RECIPES:
        cfg = load_run_config(recipe(name))
        tokens = cfg.train.steps * cfg.train.global_batch_size * cfg.data.seq_len
        info = preset_info(name, cfg.data.seq_len)
        total = info["flops_per_token_train"] * tokens
        gpu_hours = f"{total / (MFU * PEAK_BF16_FLOPS) / 3600:.1f}"
        params, flops, shown_tokens, shown_total, h100, h200, lr = rows[name]
        assert int(params.replace(",", "")) == info["params_total"], name
        assert int(flops.replace(",", "")) == info["flops_per_token_train"], name
        assert shown_tokens == f"{tokens / 1e9:.1f}B", name
        assert float(shown_total) == pytest.approx(total, rel=5e-4), name
        assert h100 == h200 == gpu_hours, name
        assert float(lr) == cfg.optim.lr, name
    submit_lines = re.findall(r"^metastate submit configs/pile/(\S+)\.yaml --nodes 4 "
                              r"--gpus-per-node 8 --time 24:00:00 --dry-run$",
                              (REPO / "docs/recipes.md").read_text(), re.M)
    assert sorted(submit_lines) == sorted([*RECIPES, "progressive-150m-450m"])


def test_progressive_recipe_shows_both_stages_and_submits_with_the_450m_budget(pile_dir, capsys,
                                                                               monkeypatch):
    monkeypatch.setenv("METASTATE_PILE", str(pile_dir))
    monkeypatch.chdir(REPO)
    assert main(["config", "show", recipe("progressive-150m-450m")]) == 0
    out = capsys.readouterr().out
    assert "# stage 1: steps 0 -> 9537, model of the run (model.*)" in out
    assert "# stage 2: steps 9537 -> 28610, model metastate-450m (grown from stage 1)" in out
    shown, baseline = yaml.safe_load(out), yaml.safe_load(
        (REPO / "configs/pile/metastate-450m.yaml").read_text())
    assert shown["model"] == dataclasses.asdict(model_preset("metastate-150m"))
    assert shown["stages"][1]["model"] == baseline["model"]["preset"] == "metastate-450m"

    code = main(["submit", recipe("progressive-150m-450m"), *SUBMIT,
                 f"data.train_path={pile_dir / 'megatron'}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    resolved = yaml.safe_load(captured.out.split("# ---- resolved config ----\n")[1])
    assert resolved["train"]["steps"] == 28610   # the from-scratch 450m recipe's token budget
    assert resolved["data"]["seq_len"] * resolved["train"]["global_batch_size"] == 524_288
    assert "checks passed for 32 ranks" in captured.err
