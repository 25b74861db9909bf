"""Meta-State, RWKV-7 and transformer language models (plain single-device nn.Modules)."""

from model.config import FAMILIES, ModelConfig
from model.generate import generate, iter_generate
from model.language_model import LanguageModel, ModelState, build_model
from model.optim_groups import parameter_groups
from model.presets import PRESETS, model_preset, preset_names
from model.rwkv_checkpoint import export_rwkv7_checkpoint, import_rwkv7_checkpoint
from model.size import ModelSize, model_size

__all__ = [
    "FAMILIES", "ModelConfig", "LanguageModel", "ModelState", "build_model", "generate",
    "iter_generate", "parameter_groups", "PRESETS", "model_preset", "preset_names", "model_size", "ModelSize",
    "export_rwkv7_checkpoint", "import_rwkv7_checkpoint",
]
