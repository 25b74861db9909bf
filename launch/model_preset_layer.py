"""`model.preset: NAME` in a run config: a named model (model/presets.py) as a config layer.

A preset stands for every field of the `model` section. Where a layer (a YAML file of the `base:`
chain or a `key=value` override) names one, the preset's fields are applied first, at that point
of the composition, and the layer's own `model.*` keys and every later layer override them. So
`metastate train demo model.preset=rwkv7-150m` trains the 150m model (the preset replaces the
demo's model), and `model.preset=metastate-150m model.n_layer=12` is that preset with 12 layers.

The resolved config keeps the fields, not the name: a run directory's `config.yaml` rebuilds the
same model even if a preset's definition changes later. `metastate config show` says which
fields came from which preset.

`model.family` is the one field an override may not change: a preset's sizes are only meaningful
for its family, so a later `model.family` that disagrees is an error naming the preset to use.
"""

from dataclasses import asdict, dataclass

from launch.preset_files import ConfigError
from model.presets import model_preset

PRESET_KEY = "preset"


@dataclass(frozen=True)
class ModelPresetLayer:
    name: str
    family: str
    source: str                        # where `model.preset` was set
    tree: dict                         # {"model": {every field of the preset}}

    @property
    def origin(self) -> str:
        """How config show and error messages name a value this preset supplied."""
        return f"model.preset={self.name} in {self.source}"


def pop_model_preset(tree: dict, source: str) -> ModelPresetLayer | None:
    """Remove `model.preset` from one layer's tree and return the preset it names, if any.

    Example: pop_model_preset({"model": {"preset": "rwkv7-150m"}}, "my.yaml").tree["model"]["n_layer"] == 10
    """
    model = tree.get("model")
    if not isinstance(model, dict) or PRESET_KEY not in model:
        return None
    name = model.pop(PRESET_KEY)
    if not model:
        del tree["model"]
    if not isinstance(name, str):
        raise ConfigError(f"model.preset must be a preset name such as metastate-150m, got "
                          f"{name!r} in {source}")
    try:
        preset = model_preset(name)
    except ValueError as error:
        raise ConfigError(f"model.preset: {error} (in {source})") from None
    return ModelPresetLayer(name, preset.family, source, {"model": asdict(preset)})


def family_conflict(preset: ModelPresetLayer | None, family: str, family_origin: str) -> list[str]:
    """A problem when a layer after the preset set `model.family` to another family."""
    if preset is None or family == preset.family:
        return []
    size = preset.name.removeprefix(preset.family + "-")
    return [f"model.family={family} in {family_origin} disagrees with {preset.origin} (a "
            f"{preset.family} model); to train {family}, set model.preset={family}-{size} "
            f"instead of model.family"]
