"""The language model shared by all families: embedding -> blocks -> final norm -> untied head.

`forward(tokens, state=None) -> (logits, state)` is the one interface: training passes no state
(and `targets=`, which returns the loss instead of the logits); generation and truncated BPTT
carry the returned `ModelState` into the next call.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig, coerce_model_config, validate_model_config
from model.generate import generate
from model.init import orthogonal_
from model.rwkv_block import LN_EPS, RWKVBlock
from model.sharding import local
from model.transformer import INIT_STD, RMS_EPS, TransformerBlock
from ops import OpsConfig, linear_cross_entropy

EMB_INIT = 1e-4          # RWKV-LM: emb.weight ~ U(-1e-4, 1e-4), ln0 rescales it


@dataclass
class ModelState:
    """What a forward pass leaves for the next one.

    layers[i] holds layer i's tensors: recurrent families {"att_shift" [B, C], "wkv"
    [B, H, N, N], "ffn_shift" [B, C], and "meta" [B, H, N, N] for metastate}; the transformer
    {"k", "v"} [B, H, T_seen, N] (its KV cache). v_first needs no state: it is layer 0's value
    of the same token. seen_tokens counts the tokens consumed so far (RoPE positions).
    """
    layers: list[dict[str, torch.Tensor]] = field(default_factory=list)
    seen_tokens: int = 0

    def detach(self) -> "ModelState":
        """The same state cut from the autograd graph (truncated BPTT between windows)."""
        return ModelState([{k: t.detach() for k, t in layer.items()} for layer in self.layers],
                          self.seen_tokens)

    def nbytes(self) -> int:
        """Total bytes held (constant in sequence length for the recurrent families)."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.values())


class LanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig, ops_cfg: OpsConfig | None = None):
        super().__init__()
        self.cfg, self.ops_cfg = cfg, ops_cfg or OpsConfig()
        C = cfg.d_model
        self.emb = nn.Embedding(cfg.vocab_size, C)
        if cfg.family == "transformer":
            self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layer))
            self.ln_out = nn.RMSNorm(C, eps=RMS_EPS)
        else:
            self.blocks = nn.ModuleList(RWKVBlock(cfg, i, self.ops_cfg)
                                        for i in range(cfg.n_layer))
            self.ln_out = nn.LayerNorm(C, eps=LN_EPS)
        self.head = nn.Linear(C, cfg.vocab_size, bias=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The family's initialisation, in place (call after `to_empty` for meta-built models).

        RWKV families: RWKV-LM's `generate_init_weight` (emb U(+-1e-4), head orthogonal with gain
        0.5 sqrt(V/C) when V > C); transformer: normal(0, 0.02) embedding and head."""
        cfg = self.cfg
        for block in self.blocks:
            block.init_weights()
        self.ln_out.reset_parameters()
        if cfg.family == "transformer":
            nn.init.normal_(self.emb.weight, std=INIT_STD)
            nn.init.normal_(self.head.weight, std=INIT_STD)
        else:
            nn.init.uniform_(self.emb.weight, -EMB_INIT, EMB_INIT)
            ratio = cfg.vocab_size / cfg.d_model
            orthogonal_(self.head.weight, 0.5 * math.sqrt(ratio) if ratio > 1 else 0.5)

    def forward(self, tokens: torch.Tensor, state: ModelState | None = None,
                targets: torch.Tensor | None = None, reduction: str = "mean"):
        """tokens: int64 [B, T] in [0, vocab_size). Returns (logits [B, T, V], ModelState), or,
        with `targets` [B, T] (ids; -100 = ignored), (cross-entropy loss, ModelState): the head
        and the loss fused in chunks of `ops.loss_chunk_size` tokens, so that no [B, T, V]
        logits exist. `reduction`: "mean" (a scalar), "sum", or "none" (per token, [B, T]).
        The loss goes through `forward` so that FSDP2/DDP/DeepSpeed hooks see it.

        Example:
            >>> logits, state = model(prompt)                # parallel pass over the prompt
            >>> logits, state = model(next_token, state)     # one more token, same result
            >>> loss, _ = model(tokens[:, :-1], targets=tokens[:, 1:])   # training
        """
        features, state = self.features(tokens, state)
        if targets is None:
            return self.head(features), state
        if targets.shape != tokens.shape:
            raise ValueError(f"model: targets {tuple(targets.shape)} must have the shape of the "
                             f"tokens {tuple(tokens.shape)}")
        # local(): under tensor parallelism the head is a replicated DTensor; each rank runs it whole
        loss = linear_cross_entropy(features.flatten(0, 1), local(self.head.weight),
                                    targets.flatten(), self.ops_cfg.loss_chunk_size, reduction)
        return (loss.view(targets.shape) if reduction == "none" else loss), state

    def features(self, tokens: torch.Tensor, state: ModelState | None = None):
        """The final-norm output [B, T, C] that the head maps to logits, and the new state."""
        self._check_tokens(tokens)
        B, T = tokens.shape
        layers = self._layer_states(state)
        position = state.seen_tokens if state is not None else 0
        x = self.emb(tokens)
        v_first = None
        new_layers = []
        for block, layer_state in zip(self.blocks, layers):
            x, v_first, new_layer_state = block(x, v_first, layer_state, position)
            new_layers.append(new_layer_state)
        return self.ln_out(x), ModelState(new_layers, position + T)

    def _layer_states(self, state: ModelState | None) -> list:
        if state is None:
            return [None] * len(self.blocks)
        if len(state.layers) != len(self.blocks):
            raise ValueError(f"model state has {len(state.layers)} layers but the model has "
                             f"{len(self.blocks)}; pass the state this model returned")
        return state.layers

    def _check_tokens(self, tokens) -> None:
        # Shape and dtype only: a range check here (tokens.min()/max()) would sync the GPU on
        # every forward. Ids are range-checked where they enter: `check_token_range` in
        # generation, the trainer's batches and evaluation.
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"model: tokens must be a 2-D tensor [batch, time], got {got}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"model: tokens have dtype {tokens.dtype}; pass int64 token ids")
        if tokens.shape[1] == 0:
            raise ValueError("model: tokens has 0 time steps; pass at least one token")

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state: ModelState | None = None):
        """One decode step: tokens [B] (one id per row) -> (logits [B, V], new ModelState).

        The same values as `model(tokens[:, None], state)` (to rounding), without the sequence
        machinery: the recurrent families run each block's one-token form. Inference only (no
        autograd), single device. States from `forward` and `step` are interchangeable.

        Example:
            >>> logits, state = model(prompt)                      # prefill
            >>> logits, state = model.step(logits[:, -1].argmax(-1), state)
        """
        if self.cfg.family == "transformer":
            features, state = self.features(tokens[:, None], state)
            return self.head(features[:, 0]), state
        layers = self._layer_states(state)
        x, v_first, new_layers = self.emb(tokens), None, []
        for block, layer_state in zip(self.blocks, layers):
            x, v_first, new_layer_state = block.step(x, v_first, layer_state)
            new_layers.append(new_layer_state)
        position = state.seen_tokens if state is not None else 0
        features = F.layer_norm(x, self.ln_out.normalized_shape, self.ln_out.weight,
                                self.ln_out.bias, self.ln_out.eps)
        return F.linear(features, self.head.weight), ModelState(new_layers, position + 1)

    @torch.no_grad()
    def prepare_for_decode(self, script: bool = False) -> "LanguageModel":
        """Ready the model for `step` (decoding). Idempotent; `generate` calls it. Returns the model.

        Layout: each CPU `nn.Linear` weight with out_features >= in_features is stored
        column-major, the same values and shape with other strides, so `F.linear` reads it as
        `x @ W^T` with W^T contiguous, which streams faster for a one-row input (10-20% for
        these shapes at 1 thread, ~4-5% of a decode step at 2; benchmarks/RESULTS.md, "Run 3").
        768x3072-like shapes (out < in) read faster row-major and are left alone.
        Each weight is re-laid in turn, so memory never holds two copies of the model.
        state_dict values, training and checkpoints are unaffected (safetensors export makes
        tensors contiguous).

        `script=True` (opt-in) also runs the rwkv7 family's one-token TimeMix and ChannelMix
        as TorchScript (model/one_token.py; compiled once per process on first use, used while
        autocast is off): the same ops with less interpreter time between them. The module keeps only
        a flag (the compilations are cached per process), so it still pickles and copies.

        Example:
            >>> model.prepare_for_decode(script=True)
            >>> logits, state = model.step(tokens, state)
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                weight = module.weight
                out_features, in_features = weight.shape
                if (type(weight.data) is torch.Tensor and weight.device.type == "cpu"
                        and out_features >= in_features and weight.stride() != (1, out_features)):
                    weight.data = weight.data.t().contiguous().t()
            if script and hasattr(module, "scripted_step"):
                module.scripted_step = True
        return self

    def generate(self, prompt_tokens, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> torch.Tensor:
        """Sample a continuation; see `model.generate.generate`.

        Example: model.generate([1, 2, 3], max_new_tokens=20, temperature=0.8, top_p=0.9, seed=0)
        """
        return generate(self, prompt_tokens, max_new_tokens, temperature, top_p, seed)


def build_model(model_cfg, ops_cfg: OpsConfig | None = None,
                device: torch.device | str | None = None) -> LanguageModel:
    """Build and initialise a model from a ModelConfig (or the run config's `model` section).

    `ops_cfg` picks the recurrence backend (default: OpsConfig(), i.e. "auto"). With
    device="meta" the model is built without memory and left uninitialised (for counting or for
    `to_empty` + `init_weights` on the real device).

    Example:
        >>> model = build_model(model_preset("metastate-tiny"), OpsConfig(backend="chunked"))
    """
    cfg = coerce_model_config(model_cfg)
    validate_model_config(cfg)
    if ops_cfg is not None and not isinstance(ops_cfg, OpsConfig):
        ops_cfg = OpsConfig(backend=ops_cfg.backend, chunk_size=ops_cfg.chunk_size,
                            loss_chunk_size=getattr(ops_cfg, "loss_chunk_size",
                                                    OpsConfig.loss_chunk_size))
    with torch.device(device or "cpu"):
        model = LanguageModel(cfg, ops_cfg)
    if str(device) != "meta":
        model.init_weights()
    return model
