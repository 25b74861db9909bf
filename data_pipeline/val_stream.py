"""The validation stream: whole documents in file order, tagged with their `pile_set_name`.

Deterministic (no shuffling, no packing), so two evals of the same checkpoint see the same tokens
and can report loss per Pile subset. Documents can be split across ranks (document i goes to
rank i mod world_size) for data-parallel evaluation.
"""

import torch

from data_pipeline.jsonl_reader import expand_paths, iter_documents, require_some
from data_pipeline.stats import StreamStats
from data_pipeline.tokenizer import load_tokenizer

SPLITS = ("val", "test")


def build_val_stream(data_cfg, split: str = "val", rank: int = 0, world_size: int = 1,
                     max_tokens: int = 0) -> "ValStream":
    """Documents of the held-out split as `{"tokens", "pile_set_name", "doc_index", "n_bytes"}`
    dicts (`n_bytes`: the UTF-8 length of the text, for tokenizer-independent bits per byte).

    `tokens` is a LongTensor of the document's ids followed by EOS; `max_tokens` > 0 stops after
    that many tokens (counted on this rank). Example:
        >>> for doc in build_val_stream(cfg.data, "val", max_tokens=100_000):
        ...     losses[doc["pile_set_name"]].append(model_loss(doc["tokens"]))
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {' | '.join(SPLITS)}, got {split!r}")
    path = data_cfg.val_path if split == "val" else data_cfg.test_path
    return ValStream(expand_paths(path, what=f"data.{split}_path"), data_cfg.tokenizer, rank,
                     world_size, max_tokens)


class ValStream:
    """Iterable over tagged whole documents; `stats` counts what was read and skipped."""

    def __init__(self, paths: list[str], tokenizer_backend: str = "tiktoken", rank: int = 0,
                 world_size: int = 1, max_tokens: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        self.paths, self.tokenizer_backend = paths, tokenizer_backend
        self.rank, self.world_size, self.max_tokens = rank, world_size, max_tokens
        self.stats = StreamStats()

    def __iter__(self):
        tokenizer = load_tokenizer(self.tokenizer_backend)
        doc_index = 0
        delivered = 0
        for path in self.paths:
            for document in iter_documents(path, self.stats):
                index, doc_index = doc_index, doc_index + 1
                if index % self.world_size != self.rank:
                    continue
                try:
                    ids = tokenizer.encode_document(document.text)
                except (UnicodeEncodeError, ValueError):
                    self.stats.warn("invalid_utf8_lines", path,
                                    f"line {document.line + 1} is not encodable as UTF-8")
                    continue
                self.stats.add("tokens", len(ids))
                delivered += 1
                yield {"tokens": torch.from_numpy(ids.astype("int64")),
                       "pile_set_name": document.pile_set_name, "doc_index": index,
                       "n_bytes": len(document.text.encode("utf-8"))}
                if self.max_tokens and self.stats["tokens"] >= self.max_tokens:
                    return
        if doc_index == 0:
            require_some(self.paths, self.stats, delivered, "documents")
