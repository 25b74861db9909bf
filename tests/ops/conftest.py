import pytest
import torch

DECAY_SCALE = 0.6065306597  # RWKV-7: w = -0.6065 * sigmoid(.), so decays lie in (0.545, 1)


def realistic_wkv7_inputs(B, T, H, N, dtype=torch.float64, seed=0):
    """Inputs with RWKV-7's ranges: log-decay in (-0.61, 0), kk unit-norm per head, a in (0, 1).

    Returns (r, w, k, v, a_arg, b_arg, initial_state) with a_arg = -kk, b_arg = kk * a.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    r, k, v = randn(B, T, H, N), randn(B, T, H, N), randn(B, T, H, N)
    w = -DECAY_SCALE * torch.sigmoid(randn(B, T, H, N) * 2)
    kk = torch.nn.functional.normalize(randn(B, T, H, N), dim=-1)
    a = torch.sigmoid(randn(B, T, H, N) * 2)
    s0 = randn(B, H, N, N) * 0.5
    return tuple(x.to(dtype) for x in (r, w, k, v, -kk, kk * a, s0))


@pytest.fixture
def wkv7_inputs():
    return realistic_wkv7_inputs
