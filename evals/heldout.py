"""Held-out loss, perplexity and bits per byte over whole documents, overall and per
`pile_set_name`, plus the loss at each token position (long-context analysis).

Every document is scored in full: an EOS is put in front of it (the separator it follows in the
training stream), so every one of its tokens, its closing EOS included, is predicted once. Bits
per byte divide the summed loss in bits by the UTF-8 length of the documents' text, so models
with different tokenizers compare. Long documents go through the model in windows of `context`
tokens: the recurrent families carry their state from one window to the next (the whole document
is context), the transformer slides its window by `stride` tokens and scores only the new ones
(each token sees at least `context - stride` earlier tokens).
"""

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from data_pipeline.tokenizer import EOS_ID
from model import LanguageModel
from model.token_ids import check_token_range

SORT_BUFFER_BATCHES = 8    # documents are sorted by length within this many batches (less padding)


@dataclass
class LossTotals:
    loss_sum: float = 0.0       # nats, summed over predicted tokens
    tokens: int = 0
    bytes: int = 0
    documents: int = 0

    def add(self, loss_sum: float, tokens: int, n_bytes: int) -> None:
        self.loss_sum += loss_sum
        self.tokens += tokens
        self.bytes += n_bytes
        self.documents += 1

    def summary(self) -> dict:
        loss = self.loss_sum / self.tokens if self.tokens else float("nan")
        bpb = self.loss_sum / math.log(2) / self.bytes if self.bytes else float("nan")
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": bpb,
                "tokens": self.tokens, "bytes": self.bytes, "documents": self.documents}


@dataclass
class PositionLoss:
    """Loss summed per token position inside its document (position 0 = the first token)."""
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    count: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    def add(self, losses: torch.Tensor, valid: torch.Tensor) -> None:
        """losses, valid: [B, T] for positions 0..T-1."""
        T = losses.shape[1]
        if T > len(self.count):
            grow = T - len(self.count)
            self.loss_sum = torch.cat([self.loss_sum, torch.zeros(grow, dtype=torch.float64)])
            self.count = torch.cat([self.count, torch.zeros(grow, dtype=torch.int64)])
        self.loss_sum[:T] += (losses.double() * valid).sum(0)
        self.count[:T] += valid.sum(0)

    def buckets(self, context: int, per_octave: int = 1) -> list[dict]:
        """Mean loss over position ranges [start, end): geometric buckets (`per_octave` per
        doubling) with an edge at `context`, so the rows beyond the training context stand apart.

        Example: buckets(128) -> [{"start": 0, "end": 1, "tokens": ..., "loss": ...}, ...]
        """
        n = len(self.count)
        edges = {0, context, n}
        for octave in range(int(math.log2(max(n, 1))) + 1):
            for k in range(per_octave):
                edges.add(int(round(2 ** (octave + k / per_octave))))
        edges = sorted(e for e in edges if 0 <= e <= n)
        rows = []
        for start, end in zip(edges, edges[1:]):
            tokens = int(self.count[start:end].sum())
            if tokens:
                rows.append({"start": start, "end": end, "tokens": tokens,
                             "loss": float(self.loss_sum[start:end].sum()) / tokens,
                             "beyond_context": start >= context})
        return rows


@dataclass
class HeldOutResult:
    overall: LossTotals = field(default_factory=LossTotals)
    subsets: dict[str, LossTotals] = field(default_factory=dict)
    positions: PositionLoss = field(default_factory=PositionLoss)

    def as_dict(self, context: int) -> dict:
        return {"overall": self.overall.summary(),
                "subsets": {name: totals.summary() for name, totals in sorted(self.subsets.items())},
                "positions": self.positions.buckets(context)}


def window_losses(model: LanguageModel, inputs: torch.Tensor, targets: torch.Tensor,
                  context: int, stride: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss [B, T] of `targets` given `inputs` (both [B, T]) and whether each target
    is the argmax [B, T], `context` tokens per forward pass: state carried across windows
    (recurrent families) or a window sliding by `stride` (transformer; 0 = context // 2)."""
    B, T = inputs.shape
    check_token_range(inputs, model.cfg.vocab_size, "evaluation batch")
    check_token_range(targets, model.cfg.vocab_size, "evaluation batch")
    stride = stride or max(1, context // 2)
    losses = torch.empty(B, T, dtype=torch.float32, device=inputs.device)
    greedy = torch.empty(B, T, dtype=torch.bool, device=inputs.device)

    # the head runs on slices of about ops.loss_chunk_size tokens: a long window never holds
    # its whole [B, context, V] fp32 logits
    chunk_tokens = model.ops_cfg.loss_chunk_size
    positions_per_slice = max(1, chunk_tokens // B) if chunk_tokens else T

    def score(features, start, end):
        for offset in range(0, end - start, positions_per_slice):
            first, last = start + offset, min(start + offset + positions_per_slice, end)
            logits = model.head(features[:, offset:offset + last - first]).float()
            losses[:, first:last] = F.cross_entropy(logits.transpose(1, 2), targets[:, first:last],
                                                    reduction="none")
            greedy[:, first:last] = logits.argmax(-1) == targets[:, first:last]

    if model.cfg.family != "transformer":
        state = None
        for start in range(0, T, context):
            features, state = model.features(inputs[:, start:start + context], state)
            score(features, start, min(start + context, T))
        return losses, greedy
    scored = 0
    while scored < T:
        # The window depends only on the position, never on T: a padded batch scores each
        # document exactly as it would be scored alone.
        end = scored + (context if scored == 0 else stride)
        first, stop = max(0, end - context), min(end, T)
        features, _ = model.features(inputs[:, first:stop])
        score(features[:, scored - first:], scored, stop)
        scored = stop
    return losses, greedy


def padded_batch(sequences: list[torch.Tensor], pad: int = EOS_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T_max] ids and the [B, T_max] mask of real tokens (right padding never
    changes the earlier positions of a causal or recurrent model)."""
    lengths = torch.tensor([len(s) for s in sequences])
    batch = torch.full((len(sequences), int(lengths.max())), pad, dtype=torch.int64)
    for row, sequence in enumerate(sequences):
        batch[row, :len(sequence)] = torch.as_tensor(sequence, dtype=torch.int64)
    return batch, torch.arange(batch.shape[1])[None, :] < lengths[:, None]


def with_eos_prefix(targets: torch.Tensor) -> torch.Tensor:
    """The inputs that predict `targets` [B, T]: EOS, then the targets shifted right by one."""
    return torch.cat([torch.full_like(targets[:, :1], EOS_ID), targets[:, :-1]], dim=1)


def _batches(documents: Iterable[dict], batch_size: int) -> Iterator[list[dict]]:
    buffer: list[dict] = []
    for document in documents:
        buffer.append(document)
        if len(buffer) == batch_size * SORT_BUFFER_BATCHES:
            yield from _sorted_chunks(buffer, batch_size)
            buffer = []
    yield from _sorted_chunks(buffer, batch_size)


def _sorted_chunks(buffer: list[dict], batch_size: int) -> Iterator[list[dict]]:
    buffer = sorted(buffer, key=lambda d: len(d["tokens"]))
    for i in range(0, len(buffer), batch_size):
        yield buffer[i:i + batch_size]


@torch.no_grad()
def evaluate_documents(model: LanguageModel, documents: Iterable[dict], context: int,
                       stride: int = 0, batch_size: int = 8, progress=None) -> HeldOutResult:
    """Score whole documents (`{"tokens", "pile_set_name", "n_bytes"}` dicts from the val
    stream; `tokens` end in EOS). `progress`: an object with `update(n_tokens)` (a tqdm bar).

    Example:
        >>> result = evaluate_documents(model, build_val_stream(cfg.data, "val"), context=512)
        >>> result.overall.summary()["bits_per_byte"]
    """
    if context < 1:
        raise ValueError(f"eval context={context} must be >= 1 token")
    if not 0 <= stride <= context:
        raise ValueError(f"eval stride={stride} must lie in [0, context={context}] (0 = context // 2)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    result = HeldOutResult()
    try:
        for batch in _batches(documents, batch_size):
            targets, valid = padded_batch([d["tokens"] for d in batch])
            inputs = with_eos_prefix(targets)
            lengths = valid.sum(1)
            losses, _ = window_losses(model, inputs.to(device), targets.to(device), context, stride)
            losses = losses.cpu()
            losses = losses.masked_fill(~valid, 0.0)
            result.positions.add(losses, valid)
            for row, document in enumerate(batch):
                loss_sum = float(losses[row].double().sum())
                n = int(lengths[row])
                result.overall.add(loss_sum, n, document["n_bytes"])
                name = document["pile_set_name"]
                result.subsets.setdefault(name, LossTotals()).add(loss_sum, n, document["n_bytes"])
            if progress is not None:
                progress.update(int(lengths.sum()))
    finally:
        model.train(was_training)
    if result.overall.tokens == 0:
        raise ValueError("eval: no documents to score; check --data and --split")
    return result
