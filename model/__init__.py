"""Meta-State, RWKV-7 and transformer language models (plain single-device nn.Modules).

The names below load on first use (PEP 562), so `import model.config` stays free of torch: the
command line reads and checks configs without paying for a torch import.
"""

import importlib

_SOURCES = {
    "FAMILIES": "model.config", "ModelConfig": "model.config",
    "generate": "model.generate", "iter_generate": "model.generate",
    "LanguageModel": "model.language_model", "ModelState": "model.language_model",
    "build_model": "model.language_model",
    "parameter_groups": "model.optim_groups",
    "PRESETS": "model.presets", "model_preset": "model.presets", "preset_names": "model.presets",
    "export_rwkv7_checkpoint": "model.rwkv_checkpoint", "import_rwkv7_checkpoint": "model.rwkv_checkpoint",
    "ModelSize": "model.size", "model_size": "model.size",
}
__all__ = list(_SOURCES)


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_SOURCES[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
