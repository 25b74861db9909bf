"""Model architecture configuration (the `model` section of a run config)."""

from dataclasses import dataclass, fields

from ops.config_rules import Problem, choice_problems, range_problems

FAMILIES = ("metastate", "rwkv7", "transformer")
SSE_MODES = ("state", "learned")
Z_NORMS = ("none", "l2", "rms")
OUT_NORMS = ("head", "full")
META_DECAYS = ("shared", "own")


@dataclass
class ModelConfig:
    family: str = "metastate"          # metastate | rwkv7 | transformer
    vocab_size: int = 50304            # GPT-NeoX-20B's 50277 padded to a multiple of 128
    n_layer: int = 12
    d_model: int = 768                 # residual width C
    d_state: int = 0                   # state width C_s = H_s * head_size; 0 means d_model
    head_size: int = 64                # N
    # Meta-State layer switches (DESIGN.md section 2)
    sse: str = "state"                 # state | learned
    z_norm: str = "l2"                 # none | l2 | rms
    out_norm: str = "head"             # head | full
    # Readings the design leaves open (benchmarks/science.py compares them; docs/model.md)
    meta_shift: bool = True            # token shift on the SSE query input; False: u_t from x_t alone
    meta_decay: str = "shared"         # shared: the TimeMix's decay d_t | own: a learned
                                       # per-channel decay of the meta-state's own (kk, a shared)
    meta_out_lr_mult: float = 1.0      # W_oms trains at this multiple of lr (own optimizer group)
    # Width of the feed-forward layer: rwkv7 ChannelMix (official: 4C) or transformer SwiGLU
    # (8C/3 rounded up to a multiple of 64). 0 = that default; unused by the metastate family.
    ffn_dim: int = 0
    # TimeMix LoRA ranks; 0 = RWKV-LM's formula max(32, round(f * sqrt(C) / 32) * 32) with
    # f = 2.5 (decay), 2.5 (in-context rate a), 1.7 (value residual), 5 (output gate).
    lora_decay: int = 0
    lora_a: int = 0
    lora_value: int = 0
    lora_gate: int = 0
    rope_theta: float = 10000.0        # transformer family only

    def problems(self) -> list[Problem]:
        """This section's own rules (model_config_problems below); [] when it is valid."""
        return model_config_problems(self)


def coerce_model_config(cfg) -> ModelConfig:
    """A ModelConfig from a ModelConfig, an omegaconf `cfg.model` node or a plain mapping.

    Example: coerce_model_config({"family": "rwkv7", "n_layer": 2}).n_layer == 2
    """
    if isinstance(cfg, ModelConfig):
        return cfg
    names = {f.name for f in fields(ModelConfig)}
    if isinstance(cfg, dict):
        items = dict(cfg)
    else:
        items = {name: getattr(cfg, name) for name in names if hasattr(cfg, name)}
    unknown = sorted(set(items) - names)
    if unknown:
        raise ValueError(f"model config: unknown key(s) {', '.join(unknown)}; "
                         f"valid keys are {', '.join(sorted(names))}")
    return ModelConfig(**items)


def state_width(cfg: ModelConfig) -> int:
    """C_s: the configured d_state, or d_model when d_state is 0."""
    return cfg.d_state or cfg.d_model


def lora_rank(cfg: ModelConfig, which: str) -> int:
    """LoRA rank of the TimeMix's `decay`, `a`, `value` or `gate` projection.

    Example: lora_rank(ModelConfig(d_model=768), "gate") == 128 (RWKV-LM's formula).
    """
    factor = {"decay": 2.5, "a": 2.5, "value": 1.7, "gate": 5.0}[which]
    override = {"decay": cfg.lora_decay, "a": cfg.lora_a, "value": cfg.lora_value,
                "gate": cfg.lora_gate}[which]
    if override:
        return override
    return max(32, int(round(factor * cfg.d_model ** 0.5 / 32) * 32))


def ffn_width(cfg: ModelConfig) -> int:
    """Hidden width of the rwkv7 ChannelMix (4C) or the transformer SwiGLU (8C/3 -> x64)."""
    if cfg.ffn_dim:
        return cfg.ffn_dim
    if cfg.family == "transformer":
        return -(-8 * cfg.d_model // 3 // 64) * 64
    return 4 * cfg.d_model


def model_config_problems(cfg: ModelConfig) -> list[Problem]:
    """Every rule of the model section on its own (parallel.tp's rules on the model are
    cross-section, in launch/config_checks.py)."""
    problems = choice_problems(cfg, "model", {"family": FAMILIES, "sse": SSE_MODES, "z_norm": Z_NORMS,
                                              "out_norm": OUT_NORMS,
                                              "meta_decay": META_DECAYS})
    problems += range_problems(cfg, "model", {
        "vocab_size": 1, "n_layer": 1, "d_model": 1, "d_state": 0, "head_size": 1, "ffn_dim": 0,
        "lora_decay": 0, "lora_a": 0, "lora_value": 0, "lora_gate": 0},
        positives=("rope_theta", "meta_out_lr_mult"))
    if cfg.head_size >= 1 and cfg.d_model % cfg.head_size:
        problems.append((f"model.d_model ({cfg.d_model}) must be a multiple of model.head_size "
                         f"({cfg.head_size})", ("model.d_model", "model.head_size")))
    if cfg.head_size >= 1 and cfg.d_state % cfg.head_size:
        problems.append((f"model.d_state ({cfg.d_state}) must be a multiple of model.head_size "
                         f"({cfg.head_size}); 0 means d_model", ("model.d_state", "model.head_size")))
    if cfg.family == "transformer" and cfg.head_size % 2:
        problems.append((f"model.head_size={cfg.head_size} must be even for RoPE", ("model.head_size",)))
    return problems


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise ValueError with the first problem of `cfg` (one line naming the field and the fix)."""
    problems = model_config_problems(cfg)
    if problems:
        raise ValueError(problems[0][0])
