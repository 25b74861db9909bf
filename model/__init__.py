"""Meta-State, RWKV-7 and transformer language models (plain single-device nn.Modules).

The names below load on first use (ops/lazy_package.py), so `import model.config` stays free of
torch: the command line reads and checks configs without paying for a torch import.
"""

from ops.lazy_package import export_lazily

__all__ = export_lazily(__name__, {
    "FAMILIES": "model.config", "ModelConfig": "model.config",
    "generate": "model.generate", "iter_generate": "model.generate",
    "LanguageModel": "model.language_model", "ModelState": "model.language_model",
    "build_model": "model.language_model",
    "parameter_groups": "model.optim_groups",
    "PRESETS": "model.presets", "model_preset": "model.presets", "preset_names": "model.presets",
    "export_rwkv7_checkpoint": "model.rwkv_checkpoint", "import_rwkv7_checkpoint": "model.rwkv_checkpoint",
    "ModelSize": "model.size", "model_size": "model.size",
})
