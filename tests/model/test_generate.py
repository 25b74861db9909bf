"""generate(): greedy decoding agrees with the parallel pass; sampling is seeded and nucleus-
restricted; bad arguments are rejected."""

import pytest
import torch

from model.generate import sample_next

from .conftest import TINY


@pytest.mark.parametrize("name", TINY)
def test_greedy_tokens_are_the_argmax_of_the_parallel_pass(name, make_tiny):
    model = make_tiny(name)
    prompt = torch.tensor([[5, 17, 3, 200], [1, 2, 3, 4]])
    new = model.generate(prompt, max_new_tokens=6, temperature=0.0)
    assert new.shape == (2, 6)
    logits, _ = model(torch.cat([prompt, new], dim=1))
    assert torch.equal(logits[:, 3:-1].argmax(-1), new)


def test_sampling_is_reproducible_and_seed_dependent(make_tiny):
    model = make_tiny("metastate-tiny")
    first = model.generate([1, 2, 3], max_new_tokens=12, temperature=1.0, seed=7)
    again = model.generate([1, 2, 3], max_new_tokens=12, temperature=1.0, seed=7)
    other = model.generate([1, 2, 3], max_new_tokens=12, temperature=1.0, seed=8)
    assert first.shape == (1, 12) and torch.equal(first, again) and not torch.equal(first, other)
    assert model.training, "generate restores the training flag"


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, 0.8, g) for _ in range(400)])
    assert set(draws.flatten().tolist()) == {0, 1}              # 0.5 + 0.3 reaches 0.8
    draws = torch.stack([sample_next(logits, 1.0, 0.1, g) for _ in range(50)])
    assert set(draws.flatten().tolist()) == {0}                  # the top token always stays


def test_generate_rejects_bad_arguments(make_tiny):
    model = make_tiny("rwkv7-tiny")
    with pytest.raises(ValueError, match="top_p=0"):
        model.generate([1], 3, top_p=0)
    with pytest.raises(ValueError, match="temperature=-1"):
        model.generate([1], 3, temperature=-1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate([1, 999], 3)
    assert model.generate([1, 2], 0).shape == (1, 0)
