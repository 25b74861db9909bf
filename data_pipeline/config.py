"""Data configuration (the `data` section of a run config); see docs/data.md."""

from dataclasses import dataclass

from ops.config_rules import Problem, choice_problems, range_problems

PRETOKENIZED_FORMATS = ("megatron", "wds")         # what `metastate preprocess` writes
DATA_FORMATS = ("jsonl", *PRETOKENIZED_FORMATS)
DATA_TOKENIZERS = ("tiktoken", "hf")


@dataclass
class DataConfig:
    # jsonl: raw Pile jsonl.zst, tokenized on the fly (resume re-reads each shard up to its saved
    # line). megatron: .bin/.idx from `metastate preprocess --format megatron`. wds: tar shards
    # from `--format wds`. megatron and wds resume in O(1) from `consumed_samples`.
    format: str = "jsonl"
    # A file, a directory or a glob. Relative paths are tried under the CWD, then the repository
    # root; the defaults are the embedded sample of the Pile-format corpus shipped in data/.
    train_path: str = "data/embedded/train/*.jsonl.zst"
    val_path: str = "data/embedded/val.jsonl.zst"      # always jsonl.zst: documents are tagged
    test_path: str = "data/embedded/test.jsonl.zst"    # with pile_set_name for per-subset evals
    seq_len: int = 512                 # tokens per sample; batches hold seq_len + 1 (input+target)
    seed: int = 1234                   # sample order is a pure function of (seed, epoch, index)
    num_workers: int = 0               # DataLoader worker processes per rank (0: in-process)
    prefetch_factor: int = 4           # batches each worker prepares ahead (num_workers > 0)
    tokenizer: str = "tiktoken"        # tiktoken (exact, ~7x faster) | hf (HF tokenizers)

    def problems(self) -> list[Problem]:
        """This section's own rules; [] when it is valid."""
        return (choice_problems(self, "data", {"format": DATA_FORMATS, "tokenizer": DATA_TOKENIZERS})
                + range_problems(self, "data", {"seq_len": 1, "num_workers": 0, "prefetch_factor": 1}))
