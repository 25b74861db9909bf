import pytest
import torch

from model import build_model, model_preset
from ops import OpsConfig

CHUNKED = OpsConfig(backend="chunked", chunk_size=16)
REFERENCE = OpsConfig(backend="reference")
TINY = ("metastate-tiny", "metastate-tiny-wide", "rwkv7-tiny", "transformer-tiny")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on a shared 2-core machine run ~100x faster single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter so that zero-initialised outputs (W_o, W_oms, FFN value,
    LoRA first factors) take part: parity tests on a fresh init would be nearly vacuous."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale)
    return model


def tiny_model(name: str, ops_cfg: OpsConfig = CHUNKED, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return perturb(build_model(model_preset(name, **overrides), ops_cfg), seed=seed)


def random_tokens(model, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.vocab_size, (batch, length), generator=generator)


@pytest.fixture
def make_tiny():
    """tiny_model(name, ops_cfg=CHUNKED, seed=0, **overrides): a perturbed tiny preset."""
    return tiny_model


@pytest.fixture
def make_tokens():
    """random_tokens(model, batch, length, seed=0): token ids inside the model's vocabulary."""
    return random_tokens
