"""Evaluation configuration (the `eval` section of a run config)."""

from dataclasses import dataclass

EVAL_SPLITS = ("val", "test")


@dataclass
class EvalConfig:
    split: str = "val"                 # val | test: which held-out file of the data section
    max_tokens: int = 0                # stop after this many tokens; 0 = the whole split
    batch_size: int = 8                # sequences per forward pass
