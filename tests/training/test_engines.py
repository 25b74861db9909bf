"""Engines see only their sections (EngineSetup) and implement the trainer's Engine protocol."""

import dataclasses
import inspect

import torch

from launch.run_config import load_run_config
from model import build_model
from training.deepspeed_engine import DeepSpeedEngine
from training.distributed import DistEnv
from training.engine_interface import Engine, EngineSetup
from training.engines import TorchEngine, build_engine
from training.layout import plan_layout
from training.parallelize import parallelize
from training.stability import NonFiniteGuard

from .conftest import TINY

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_engine_setup_carries_sections_not_the_run_config():
    names = [field.name for field in dataclasses.fields(EngineSetup)]
    assert {"optim", "train", "parallel"} <= set(names)
    assert not {"model", "data", "ops", "checkpoint", "tracking", "launch", "eval", "cfg"} & set(names)


def test_torch_engine_implements_the_protocol_and_steps(tmp_path):
    cfg = load_run_config("smoke", [*TINY, f"train.out_dir={tmp_path}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.ops, device=CPU.device)
    net = parallelize(model, plan_layout(cfg.parallel, 1), cfg.train, CPU.device)
    engine = build_engine(model, net, EngineSetup(cfg.optim, cfg.train, cfg.parallel, CPU, 1, torch.float32))
    assert isinstance(engine, TorchEngine) and isinstance(engine, Engine)
    before = [p.detach().clone() for p in model.parameters()]
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 9))
    with engine.accumulating(True):
        loss, _ = engine.net(tokens[:, :-1], targets=tokens[:, 1:])
    engine.backward(loss)
    grad_norm = engine.step(loss.item(), NonFiniteGuard(cfg.train.max_bad_steps), 1)
    assert grad_norm > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_deepspeed_engine_has_every_protocol_method_with_the_same_parameters():
    for name in ("accumulating", "backward", "step", "save", "load"):
        expected = inspect.signature(getattr(Engine, name)).parameters
        assert list(inspect.signature(getattr(DeepSpeedEngine, name)).parameters) == list(expected), name
    assert isinstance(DeepSpeedEngine.lr, property) and DeepSpeedEngine.checkpoint_format == "deepspeed"
