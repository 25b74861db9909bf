"""Sampling with a carried state: one parallel pass over the prompt, then one token per step.

The recurrent families carry constant-size state (token shifts, WKV and meta-states); the
transformer carries its KV cache. Each new token goes through `LanguageModel.step` (the
one-token form). `model` is a LanguageModel; this module does not import it, so that
LanguageModel.generate can call in here without an import cycle.
"""

from collections.abc import Iterator

import torch

from model.token_ids import check_token_range


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row of logits [B, V]: greedy at temperature 0, else nucleus sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(model, prompt_tokens, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, seed: int | None = None) -> torch.Tensor:
    """Continue each prompt by `max_new_tokens` tokens; returns the new tokens [B, max_new].

    prompt_tokens: a list of ids, a 1-D tensor, or a [B, T] tensor. temperature 0 is greedy;
    top_p < 1 samples from the smallest set of tokens holding that probability mass. The same
    seed gives the same tokens.

    Example:
        >>> new = generate(model, [1, 2, 3], max_new_tokens=16, temperature=0.8, top_p=0.9, seed=0)
    """
    prompt = _as_prompt(model, prompt_tokens)
    new_tokens = list(iter_generate(model, prompt, max_new_tokens, temperature, top_p, seed))
    if not new_tokens:
        return prompt.new_zeros(prompt.shape[0], 0)
    return torch.stack(new_tokens, dim=1)


def iter_generate(model, prompt_tokens, max_new_tokens: int, temperature: float = 1.0,
                  top_p: float = 1.0, seed: int | None = None) -> Iterator[torch.Tensor]:
    """`generate`, one step at a time: yields each new token [B] as soon as it is sampled (for
    streaming). Only the carried state is kept, so memory is constant in the number of tokens
    for the recurrent families. The weights are re-laid for decoding first
    (`LanguageModel.prepare_for_decode`: same values, column-major where that reads faster).

    Example:
        >>> for token in iter_generate(model, [1, 2, 3], max_new_tokens=16, temperature=0):
        ...     print(tokenizer.decode(token.tolist()), end="", flush=True)
    """
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise ValueError(f"generate: temperature={temperature} must be >= 0 (0 = greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"generate: top_p={top_p} must be in (0, 1]")
    prompt = _as_prompt(model, prompt_tokens)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=prompt.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    model.prepare_for_decode()   # the weight layout one-row products read fastest (same values)
    try:
        with torch.no_grad():
            logits, state = model(prompt)
        logits = logits[:, -1]
        for step in range(max_new_tokens):
            token = sample_next(logits, temperature, top_p, generator)
            yield token
            if step + 1 < max_new_tokens:
                logits, state = model.step(token, state)
    finally:
        model.train(was_training)


def _as_prompt(model, prompt_tokens) -> torch.Tensor:
    device = next(model.parameters()).device
    prompt = torch.as_tensor(prompt_tokens, dtype=torch.int64, device=device)
    check_token_range(prompt, model.cfg.vocab_size, "generate: prompt")
    return prompt[None] if prompt.dim() == 1 else prompt
