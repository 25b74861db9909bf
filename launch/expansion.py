"""`metastate expand` as a library call: the grown model's run config is built here (from a model
preset or a run config, around the parent's own config), the growing itself is training/expand.py.
"""

import dataclasses
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from launch.run_config import ConfigError, load_run_config
from model.expansion_rules import ExpansionError
from model.presets import PRESETS, model_preset
from training.expand import Parent, grow_checkpoint, load_parent, refuse_existing_run


def expand_checkpoint(source: str | Path, to: str, output: str | Path, freeze_old: bool = False,
                      seed: int = 0, config: str | None = None) -> Path:
    """Grow `source` into the model `to` names and write DIR/checkpoints/step-N (N = the parent's
    step) plus DIR/config.yaml. Returns the checkpoint directory.

    Example:
        >>> expand_checkpoint("runs/small", "metastate-450m", "runs/grown", freeze_old=False)
        >>> # then: metastate train runs/grown/config.yaml train.steps=20000
    """
    refuse_existing_run(Path(output))
    parent = load_parent(source)
    cfg = target_run_config(parent, to, config, Path(output))
    return grow_checkpoint(parent, cfg, output, freeze_old=freeze_old, seed=seed)


def target_run_config(parent: Parent, to: str, config: str | None, output: Path):
    """The run config of the grown model: `to` as a model preset (metastate-450m) replaces the
    model section of `config` (a run preset or YAML; default: the parent's own run config), or
    `to` is itself a run config. train.out_dir becomes `output`, train.resume auto."""
    if to in PRESETS:
        if config is not None:
            tree = OmegaConf.to_container(load_run_config(config), resolve=True)
        elif parent.run_config is not None:
            tree = dict(parent.run_config)
        else:
            raise ExpansionError(f"{parent.path} is an export without a run config: pass "
                                 "--config RUN_CONFIG (a preset such as demo, or a YAML path)")
        tree["model"] = dataclasses.asdict(model_preset(to))
    else:
        try:
            tree = OmegaConf.to_container(load_run_config(to), resolve=True)
        except ConfigError as err:
            raise ExpansionError(f"--to {to}: neither a model preset ({', '.join(sorted(PRESETS))}) "
                                 f"nor a loadable run config ({err})") from None
    tree["train"] = {**tree["train"], "out_dir": str(output), "resume": "auto"}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(tree)))
        f.flush()
        return load_run_config(f.name)
