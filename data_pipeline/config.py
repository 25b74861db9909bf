"""Data configuration (the `data` section of a run config)."""

from dataclasses import dataclass


@dataclass
class DataConfig:
    format: str = "jsonl"              # jsonl (raw jsonl.zst) | megatron (.bin/.idx) | wds (tar)
    train_path: str = "data/embedded/train/*.jsonl.zst"
    val_path: str = "data/embedded/val.jsonl.zst"
    seq_len: int = 512
    seed: int = 1234
    num_workers: int = 0
