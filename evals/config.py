"""Evaluation configuration (the `eval` section of a run config)."""

from dataclasses import dataclass

from ops.config_rules import Problem, choice_problems, range_problems

EVAL_SPLITS = ("val", "test")


@dataclass
class EvalConfig:
    split: str = "val"                 # val | test: which held-out file of the data section
    max_tokens: int = 0                # stop after this many tokens; 0 = the whole split
    batch_size: int = 8                # documents per forward pass
    # Tokens per forward window; 0 = the checkpoint's data.seq_len. Recurrent families carry
    # their state across windows (true long context); the transformer slides a window of this
    # length forward by `stride` tokens and scores only the new ones.
    context: int = 0
    stride: int = 0                    # transformer only; 0 = context // 2

    def problems(self) -> list[Problem]:
        """This section's own rules; [] when it is valid."""
        return (choice_problems(self, "eval", {"split": EVAL_SPLITS})
                + range_problems(self, "eval", {"max_tokens": 0, "batch_size": 1, "context": 0, "stride": 0}))
