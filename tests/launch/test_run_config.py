"""Composition, overrides and the errors of the run config (launch/run_config.py)."""

import pytest
from omegaconf import DictConfig, OmegaConf

from launch.config import slurm_time_to_seconds
from launch.preset_files import available_presets
from launch.run_config import (
    ConfigError,
    RunConfig,
    load_run_config,
    to_plain_dict,
    to_yaml,
)

SECTIONS = ["model", "ops", "data", "optim", "train", "parallel", "checkpoint", "tracking",
            "launch", "eval", "stages"]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_error(*args) -> str:
    with pytest.raises(ConfigError) as caught:
        load_run_config(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["demo", "smoke"])
def test_shipped_presets_load_with_every_section(name):
    assert name in available_presets()
    cfg = load_run_config(name)
    assert isinstance(cfg, DictConfig)
    assert list(cfg.keys()) == SECTIONS
    assert list(to_plain_dict(cfg)) == SECTIONS


def test_demo_is_the_tiny_cpu_metastate_model():
    cfg = load_run_config("demo")
    model = cfg.model
    assert (model.family, model.n_layer, model.d_model, model.head_size, model.vocab_size) == (
        "metastate", 2, 128, 32, 50304)
    assert 100 <= cfg.train.steps <= 1000
    assert cfg.parallel.backend == "none"
    assert cfg.optim.eps == 1e-18 and cfg.optim.w0_lr_mult == 2.0
    assert list(cfg.optim.betas) == [0.9, 0.99]


def test_smoke_extends_demo_through_base():
    demo, smoke = load_run_config("demo"), load_run_config("smoke")
    assert smoke.model == demo.model
    assert smoke.train.steps < demo.train.steps
    assert smoke.tracking.backend == "none"


def test_overrides_convert_types_and_apply_in_order():
    cfg = load_run_config("demo", ["train.steps=10", "model.n_layer=4", "optim.lr=1",
                                   "optim.betas=[0.9,0.95]", "tracking.uri=", "train.steps=12",
                                   "train.compile=true", "launch.time=1:30:00"])
    assert cfg.train.steps == 12 and isinstance(cfg.train.steps, int)
    assert cfg.model.n_layer == 4
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert list(cfg.optim.betas) == [0.9, 0.95]
    assert cfg.tracking.uri == ""
    assert cfg.train.compile is True
    # YAML 1.1 would read 1:30:00 as the base-60 integer 5400 (5400 minutes to SLURM).
    assert cfg.launch.time == "1:30:00"


def test_interpolations_are_resolved():
    cfg = load_run_config("demo", ["train.out_dir=runs/${tracking.experiment}"])
    assert cfg.train.out_dir == "runs/metastate-demo"
    assert "${" not in to_yaml(cfg)


def test_bare_name_prefers_the_cwd_then_falls_back_to_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_run_config("demo").model.n_layer == 2
    write(tmp_path / "configs" / "demo.yaml", "model:\n  n_layer: 3\n")
    assert load_run_config("demo").model.n_layer == 3


def test_yaml_output_loads_back_to_the_same_config(tmp_path):
    cfg = load_run_config("smoke", ["launch.time=2-00:00:00", "optim.lr=3e-4"])
    path = write(tmp_path / "resolved.yaml", to_yaml(cfg))
    assert to_plain_dict(load_run_config(str(path))) == to_plain_dict(cfg)


def test_unknown_key_in_a_file_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path / "typo.yaml", "base: demo\ntrain:\n  stpes: 10\n")
    message = config_error(str(path))
    assert f"unknown key 'train.stpes' in {path}; did you mean 'train.steps'?" in message


def test_unknown_keys_on_the_command_line_are_reported_together():
    message = config_error("demo", ["train.stpes=3", "model.nlayer=4", "trian.steps=1",
                                    "steps=5", "model.zzzz=1"])
    assert message.startswith("unknown keys on the command line:")
    for key, suggestion in [("train.stpes", "train.steps"), ("model.nlayer", "model.n_layer"),
                            ("trian.steps", "train.steps"), ("steps", "train.steps")]:
        assert f"'{key}' (did you mean '{suggestion}'?)" in message
    assert "'model.zzzz' (valid keys of 'model': family," in message


@pytest.mark.parametrize("override, expected", [
    ("train.steps=abc", "train.steps must be an integer, got 'abc'"),
    ("train.steps=1.5", "train.steps must be an integer, got 1.5"),
    ("optim.lr=fast", "optim.lr must be a number, got 'fast'"),
    ("train.compile=maybe", "train.compile must be true or false, got 'maybe'"),
    ("optim.betas=[0.9,x]", "optim.betas must be a list of numbers, got [0.9, 'x']"),
    ("tracking.uri=null", "tracking.uri must be a string, got null"),
    ("train.steps.x=1", "train.steps must be an integer, got a mapping"),
    ("model=3", "'model' in command-line override 'model=3' is a section, not a value"),
])
def test_wrong_types_name_key_value_and_override(override, expected):
    message = config_error("demo", [override])
    assert expected in message
    assert f"'{override}'" in message


def test_wrong_type_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "train:\n  steps: many\n  log_every: often\n")
    message = config_error(str(path))
    assert f"train.steps must be an integer, got 'many' in {path}" in message
    assert f"train.log_every must be an integer, got 'often' in {path}" in message


@pytest.mark.parametrize("override, suggestion", [
    ("model.family=metastat", "metastate"), ("model.sse=stat", "state"),
    ("model.z_norm=l3", "l2"), ("model.out_norm=heads", "head"), ("ops.backend=chunk", "chunked"),
    ("data.format=json", "jsonl"), ("data.tokenizer=tiktokn", "tiktoken"), ("parallel.backend=fsdp", "fsdp2"),
    ("tracking.backend=mlflo", "mlflow"), ("train.dtype=bf61", "bf16"), ("eval.split=vall", "val"),
])
def test_bad_choice_suggests_the_nearest(override, suggestion):
    key, value = override.split("=")
    message = config_error("demo", [override])
    assert f"{key} must be one of" in message
    assert f"got '{value}' (did you mean '{suggestion}'?) in command-line override" in message
    assert ";" not in message  # reported once, not again by the model's own validation


@pytest.mark.parametrize("overrides, expected", [
    (["model.d_state=100"], "model.d_state (100) must be a multiple of model.head_size (32)"),
    (["model.d_model=100"], "model.d_model (100) must be a multiple of model.head_size (32)"),
    (["parallel.zero_stage=4"], "parallel.zero_stage must be one of 1 | 2 | 3, got 4"),
    (["parallel.tp=0"], "parallel.tp must be >= 1, got 0"),
    (["parallel.tp=3"], "parallel.tp (3) must divide the 4 state heads"),
    (["parallel.backend=deepspeed", "parallel.tp=2"], "parallel.tp must be 1 with"),
    (["parallel.dp=0"], "parallel.dp must be -1 (world_size / tp) or >= 1, got 0"),
    (["train.global_batch_size=10"], "train.global_batch_size (10) must be a multiple of"),
    (["optim.betas=[0.9]"], "optim.betas must be two numbers in [0, 1)"),
    (["optim.lr=0"], "optim.lr must be > 0"),
    (["launch.time=soon"], "launch.time must be a SLURM time"),
    (["launch.time=1"], "launch.signal_grace_s (120) must be shorter than launch.time"),
    (["model.family=transformer", "model.head_size=33", "model.d_model=132"],
     "must be even for RoPE"),
])
def test_cross_field_rules(overrides, expected):
    assert expected in config_error("demo", overrides)


def test_rule_errors_say_where_the_values_came_from():
    message = config_error("demo", ["parallel.tp=3"])
    assert "command-line override 'parallel.tp=3'" in message
    assert "configs/demo.yaml" in message  # model.head_size comes from the preset


def test_missing_preset_suggests_a_near_name():
    message = config_error("demoo")
    assert "no preset named 'demoo'" in message and "did you mean 'demo'?" in message


def test_preset_file_problems(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    assert "cycle" in config_error(str(tmp_path / "a.yaml"))
    write(tmp_path / "dup.yaml", "train:\n  steps: 1\n  steps: 2\n")
    assert "duplicate key 'steps'" in config_error(str(tmp_path / "dup.yaml"))
    write(tmp_path / "list.yaml", "- 1\n")
    assert "must hold a mapping" in config_error(str(tmp_path / "list.yaml"))
    assert "not found" in config_error(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("override", ["train.steps", "=3", "train..steps=3", "base=demo"])
def test_malformed_overrides(override):
    assert override in config_error("demo", [override])


def test_unresolvable_interpolation_names_the_key():
    message = config_error("demo", ["train.out_dir=${nope.x}"])
    assert "cannot resolve 'train.out_dir'" in message and "nope.x" in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
    assert [name for name in RunConfig.__dataclass_fields__] == SECTIONS


@pytest.mark.parametrize("text, seconds", [
    ("30", 1800), ("5:00", 300), ("01:00:00", 3600), ("1-02", 93600), ("1-02:30", 95400),
    ("2-00:00:10", 172810), ("soon", None), ("1:2:3:4", None),
])
def test_slurm_time_to_seconds(text, seconds):
    assert slurm_time_to_seconds(text) == seconds


BROKEN_SECTIONS = {"model": {"head_size": 0}, "ops": {"backend": "x"}, "data": {"seq_len": 0},
                   "optim": {"lr": 0.0}, "train": {"steps": 0}, "parallel": {"tp": 0},
                   "checkpoint": {"every": -1}, "tracking": {"backend": "x"}, "launch": {"nodes": 0},
                   "eval": {"split": "x"}}


def test_every_section_validates_itself_and_names_only_its_own_keys():
    schema = OmegaConf.structured(RunConfig)
    # `stages` is a list of sections, checked as a whole (tests/launch/test_stages.py)
    assert sorted(BROKEN_SECTIONS) == sorted(set(SECTIONS) - {"stages"})
    for name, values in BROKEN_SECTIONS.items():
        assert OmegaConf.to_object(schema[name]).problems() == [], name  # the defaults are valid
        problems = OmegaConf.to_object(OmegaConf.merge(schema[name], values)).problems()
        assert problems, name
        for _, keys in problems:
            for key in keys:
                assert key.startswith(f"{name}.") and OmegaConf.select(schema, key, default=KeyError) \
                    is not KeyError, key


def test_nan_is_rejected_where_a_minimum_applies():
    assert "optim.min_lr_ratio must be >= 0, got nan" in config_error(
        "demo", ["optim.min_lr_ratio=.nan"])
