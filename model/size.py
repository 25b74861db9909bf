"""Parameter counts and FLOPs per token, from a config alone (the model is built on the meta
device, so even the 1.5b presets cost no memory).

FLOPs are RWKV-aware rather than 6N: every matmul weight costs 2 FLOPs per token forward (the
embedding is a lookup and costs none), and each recurrence costs its per-token state math. One
WKV-7 step per head, S <- S (diag(d) + a b^T) + v k^T with read-out S r, is
    S a (2N^2) + the update (5N^2: scale, two rank-1 terms) + S r (2N^2) = 9 N^2,
and a second query on the same states (the SSE read-out S u) adds 2 N^2. The transformer's
causal attention adds 2 C (T + 1) per layer (QK^T and AV over the mean context (T + 1) / 2).
Element-wise work (norms, gates, token shift) is left out, as in the usual 6N + attention count.
Training is 3x forward (backward = 2x forward).
"""

from dataclasses import dataclass

import torch
from torch import nn

from model.config import ModelConfig, coerce_model_config, state_width, validate_model_config
from model.time_mix import TimeMix

WKV_STEP_FLOPS_PER_N2 = 9
EXTRA_QUERY_FLOPS_PER_N2 = 2
LORA_NAMES = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")


@dataclass
class ModelSize:
    total_params: int
    embedding_params: int       # emb.weight + head.weight
    non_embedding_params: int   # total - embedding_params
    matmul_flops: int           # per token, forward
    scan_flops: int             # per token, forward: WKV / SSE read-out / meta-state recurrences
    attention_flops: int        # per token, forward, at the given sequence length
    seq_len: int

    @property
    def forward_flops(self) -> int:
        return self.matmul_flops + self.scan_flops + self.attention_flops

    @property
    def train_flops(self) -> int:
        return 3 * self.forward_flops


def _matmul_weights(model: nn.Module) -> int:
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            count += module.weight.numel()
        if isinstance(module, TimeMix):
            count += sum(getattr(module, n).numel() for n in LORA_NAMES if hasattr(module, n))
        if hasattr(module, "sse_weight"):
            count += module.sse_weight.numel()
    return count


def scan_flops_per_token(cfg: ModelConfig) -> int:
    """Forward FLOPs per token of all recurrences (0 for the transformer)."""
    if cfg.family == "transformer":
        return 0
    N = cfg.head_size
    heads = state_width(cfg) // N
    per_head = WKV_STEP_FLOPS_PER_N2 * N * N                        # TimeMix scan
    if cfg.family == "metastate":
        per_head += WKV_STEP_FLOPS_PER_N2 * N * N                   # meta-state scan
        if cfg.sse == "state":
            per_head += EXTRA_QUERY_FLOPS_PER_N2 * N * N            # SSE read-out S_t u_t
    return cfg.n_layer * heads * per_head


def model_size(model_cfg, seq_len: int = 4096) -> ModelSize:
    """Parameter counts and per-token FLOPs of a config.

    Example: model_size(model_preset("rwkv7-150m")).total_params == 152_598_528
    """
    from model.language_model import build_model

    cfg = coerce_model_config(model_cfg)
    validate_model_config(cfg)
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be at least 1")
    model = build_model(cfg, device=torch.device("meta"))
    total = sum(p.numel() for p in model.parameters())
    embedding = model.emb.weight.numel() + model.head.weight.numel()
    attention = 0
    if cfg.family == "transformer":
        attention = cfg.n_layer * 2 * cfg.d_model * (seq_len + 1)
    return ModelSize(
        total_params=total,
        embedding_params=embedding,
        non_embedding_params=total - embedding,
        matmul_flops=2 * _matmul_weights(model),
        scan_flops=scan_flops_per_token(cfg),
        attention_flops=attention,
        seq_len=seq_len,
    )
