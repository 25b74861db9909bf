"""`model.preset: NAME` in run configs: the preset's fields at that layer, later keys override them."""

import dataclasses

import pytest
import yaml

from launch.cli import main
from launch.run_config import ConfigError, load_run_config, load_run_config_with_origins, to_yaml
from model.presets import model_preset


def model_fields(cfg) -> dict:
    return {name: getattr(cfg.model, name) for name in dataclasses.asdict(model_preset("rwkv7-150m"))}


def test_a_preset_on_the_command_line_replaces_the_base_model_and_later_keys_override_it():
    cfg = load_run_config("demo", ["model.preset=metastate-150m", "model.n_layer=12"])
    expected = dataclasses.asdict(model_preset("metastate-150m", n_layer=12))
    assert model_fields(cfg) == expected
    assert cfg.model.d_model == 768 != load_run_config("demo").model.d_model


def test_a_preset_in_yaml_takes_the_same_files_own_model_keys_as_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("base: demo\nmodel:\n  n_layer: 3\n  preset: rwkv7-150m\n  ffn_dim: 256\n")
    cfg, origins = load_run_config_with_origins(path, ["model.head_size=32"])
    expected = dataclasses.asdict(model_preset("rwkv7-150m", n_layer=3, ffn_dim=256, head_size=32))
    assert model_fields(cfg) == expected
    assert origins["model.d_model"] == f"model.preset=rwkv7-150m in {path}"
    assert origins["model.n_layer"] == str(path)


def test_the_resolved_config_rebuilds_the_same_model_without_the_preset(tmp_path):
    cfg = load_run_config("demo", ["model.preset=transformer-450m", "model.n_layer=5"])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))  # what a run directory keeps
    assert "preset" not in yaml.safe_load(saved.read_text())["model"]
    assert model_fields(load_run_config(saved)) == model_fields(cfg)


def test_a_family_that_disagrees_with_the_preset_is_an_error_naming_the_preset_to_use():
    with pytest.raises(ConfigError, match=r"model.family=rwkv7 .* disagrees with "
                                          r"model.preset=metastate-450m .* set "
                                          r"model.preset=rwkv7-450m instead"):
        load_run_config("demo", ["model.preset=metastate-450m", "model.family=rwkv7"])
    # the same family, or a family set before the preset (which replaces it), is fine
    assert load_run_config("demo", ["model.preset=rwkv7-150m", "model.family=rwkv7"]).model.n_layer == 10
    assert load_run_config("demo", ["model.family=rwkv7", "model.preset=transformer-150m"]
                           ).model.family == "transformer"


def test_unknown_preset_is_one_line_with_the_close_match_and_exit_code_2(capsys):
    assert main(["config", "show", "demo", "model.preset=metastate-15m"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("config error: model.preset: unknown model preset 'metastate-15m' "
                           "(did you mean 'metastate-150m'?)")


def test_a_preset_that_is_not_a_name_is_an_error():
    with pytest.raises(ConfigError, match=r"model.preset must be a preset name .* got 3"):
        load_run_config("demo", ["model.preset=3"])


def test_config_show_names_where_each_model_value_came_from(capsys):
    assert main(["config", "show", "demo", "model.preset=rwkv7-tiny", "model.n_layer=3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert ("  n_layer: 3  # command-line override 'model.n_layer=3'") in lines
    assert ("  d_model: 64  # model.preset=rwkv7-tiny in command-line override "
            "'model.preset=rwkv7-tiny'") in lines
    assert "  rope_theta: 10000.0  # model.preset=rwkv7-tiny" in out
    assert yaml.safe_load(out)["model"]["n_layer"] == 3  # the annotations are YAML comments


def test_an_unset_environment_variable_is_a_one_line_error_saying_what_to_set():
    with pytest.raises(ConfigError, match=r"^data.train_path in command-line override .* needs the "
                                          r"environment variable METASTATE_TEST_UNSET, which is not "
                                          r"set; export METASTATE_TEST_UNSET=\.\.\. or pass "
                                          r"data.train_path=\.\.\. on the command line$"):
        load_run_config("demo", ["data.train_path=${oc.env:METASTATE_TEST_UNSET}/train"])


def test_a_misspelt_preset_key_suggests_model_preset():
    with pytest.raises(ConfigError, match=r"unknown key 'model.prest' on the command line; did you "
                                          r"mean 'model.preset'\?"):
        load_run_config("demo", ["model.prest=metastate-150m"])
    with pytest.raises(ConfigError, match=r"unknown key 'preset' .* did you mean 'model.preset'\?"):
        load_run_config("demo", ["preset=metastate-150m"])
