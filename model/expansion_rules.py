"""Which models can grow into which (DESIGN.md section 6): the rules on two model configs alone,
without torch, so that a staged run config is checked before anything is built. model/expand.py
does the growing."""

from model.config import ModelConfig, coerce_model_config, ffn_width, lora_rank, state_width

# Fields that must stay equal: they fix the residual width, the vocabulary, the per-head maths,
# the LoRA ranks (a grown gate LoRA would add sigmoid(0) * fresh rows) or the FFN width.
FIXED_FIELDS = ("family", "vocab_size", "d_model", "head_size", "sse", "z_norm", "out_norm",
                "meta_shift", "meta_decay")
RECURRENT_FAMILIES = ("metastate", "rwkv7")


class ExpansionError(ValueError):
    """A target the parent cannot grow into; the message lists every incompatible field."""


def expansion_problems(parent: ModelConfig, target: ModelConfig) -> list[str]:
    """Every reason `parent` cannot grow into `target`, one phrase each (empty when it can)."""
    problems = []
    if target.family not in RECURRENT_FAMILIES:
        problems.append(f"model.family={target.family} (only {' and '.join(RECURRENT_FAMILIES)} "
                        "models grow their state)")
    for name in FIXED_FIELDS:
        before, after = getattr(parent, name), getattr(target, name)
        if before != after:
            problems.append(f"model.{name} {before!r} -> {after!r} (must stay the same)")
    for which in ("decay", "a", "value", "gate"):
        before, after = lora_rank(parent, which), lora_rank(target, which)
        if before != after:
            problems.append(f"LoRA rank model.lora_{which} {before} -> {after} (must stay the same)")
    if parent.family == target.family == "rwkv7" and ffn_width(parent) != ffn_width(target):
        problems.append(f"model.ffn_dim {ffn_width(parent)} -> {ffn_width(target)} "
                        "(must stay the same)")
    if target.n_layer < parent.n_layer:
        problems.append(f"model.n_layer {parent.n_layer} -> {target.n_layer} (shrinks)")
    c_before, c_after = state_width(parent), state_width(target)
    if c_after < c_before:
        problems.append(f"state width C_s (model.d_state) {c_before} -> {c_after} (shrinks)")
    elif c_after > c_before and target.out_norm == "full" and target.family == "metastate":
        problems.append("model.out_norm='full' (a LayerNorm over all of C_s mixes new heads into "
                        "old ones; only out_norm=head grows exactly)")
    if (target.family == "metastate" and c_before != parent.d_model
            and c_after == target.d_model and c_after != c_before):
        problems.append(f"state width C_s {c_before} -> {c_after} = C drops the parent's W_in "
                        "(grow C_s past C instead)")
    if not problems and (target.n_layer, c_after) == (parent.n_layer, c_before):
        problems.append("n_layer and d_state are unchanged (nothing to grow)")
    return problems


def check_expansion(parent, target) -> tuple[ModelConfig, ModelConfig]:
    """Both configs as ModelConfig, or an ExpansionError listing every incompatible field.

    Example: check_expansion(model_preset("metastate-150m"), model_preset("metastate-450m"))
    """
    parent, target = coerce_model_config(parent), coerce_model_config(target)
    problems = expansion_problems(parent, target)
    if problems:
        raise ExpansionError(
            f"cannot expand {describe(parent)} into {describe(target)}: " + "; ".join(problems)
            + "; pick a target of the same family, C, vocabulary and head maths with at least as "
            "many layers and state heads")
    return parent, target


def describe(cfg: ModelConfig) -> str:
    return (f"{cfg.family} (n_layer={cfg.n_layer}, C={cfg.d_model}, C_s={state_width(cfg)}, "
            f"vocab={cfg.vocab_size})")
