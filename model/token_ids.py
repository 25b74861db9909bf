"""Token-id range check for the places where ids enter a model (prompts, data batches)."""

import torch


def check_token_range(tokens: torch.Tensor, vocab_size: int, where: str = "model") -> None:
    """Raise ValueError naming the first id outside [0, vocab_size). One host sync: call it where
    ids enter (a prompt, a CPU batch before it moves to the GPU), not inside the model."""
    if tokens.numel() == 0:
        return
    low, high = (int(t) for t in torch.aminmax(tokens))
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{where}: token id {bad} is outside the vocabulary [0, {vocab_size}); "
                         f"check the tokenizer or model.vocab_size")
