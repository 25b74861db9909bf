"""The periodic validation loss: fixed windows of the held-out split, identical every time."""

import torch

from data_pipeline.val_stream import build_val_stream
from training.distributed import DistEnv


class ValidationWindows:
    """`batches` micro-batches of `seq_len + 1` tokens per rank, cut from the validation
    documents in file order; every rank runs the same number of forward passes (FSDP2 needs
    that) and the loss is averaged over all ranks' tokens."""

    def __init__(self, data_cfg, micro_batch_size: int, batches: int, env: DistEnv,
                 data_parallel: tuple[int, int] | None = None):
        # (rank, ranks) of data parallelism; tensor-parallel peers take the same windows
        self.env = env
        rank, ranks = data_parallel or (env.rank, env.world_size)
        window = data_cfg.seq_len + 1
        per_rank = micro_batch_size * batches
        needed = per_rank * ranks * window
        docs = [doc["tokens"] for doc in build_val_stream(data_cfg, "val", max_tokens=needed)]
        tokens = torch.cat(docs) if docs else torch.empty(0, dtype=torch.long)
        usable = len(tokens) // window
        if usable < ranks * micro_batch_size:
            raise ValueError(f"data.val_path={data_cfg.val_path} holds {len(tokens)} tokens, fewer than one "
                             f"micro-batch of {micro_batch_size} x {window} per rank; use a larger split")
        per_rank = min(per_rank, usable // ranks) // micro_batch_size * micro_batch_size
        windows = tokens[: usable * window].view(usable, window)
        mine = windows[rank * per_rank:(rank + 1) * per_rank]
        self.batches = list(mine.split(micro_batch_size))

    @torch.no_grad()
    def loss(self, model, autocast) -> float:
        was_training = model.training
        model.eval()
        total = torch.zeros(2, dtype=torch.float64)
        for batch in self.batches:
            batch = batch.to(self.env.device)
            with autocast():
                loss, _ = model(batch[:, :-1], targets=batch[:, 1:], reduction="sum")
            total += torch.tensor([loss.item(), batch[:, 1:].numel()], dtype=torch.float64)
        model.train(was_training)
        loss_sum, count = self.env.all_reduce_sum(total).tolist()
        return loss_sum / count


def final_validation_line(val_loss: float, step: int, cfg, data_parallel_ranks: int) -> str:
    """What `metastate train` closes with: the last periodic validation loss, saying which tokens
    it covers, because `metastate eval` scores a longer stretch of the split and differs.

    Example: final_validation_line(6.08, 150, load_run_config("demo"), 1) ->
    "final validation loss: 6.0800 at step 150 (periodic check: the first 4,096 tokens of the val
    split; `metastate eval runs/demo --split val` scores eval.max_tokens=65,536, a different number)"
    """
    t = cfg.train
    tokens = t.eval_batches * t.micro_batch_size * data_parallel_ranks * cfg.data.seq_len
    scope = f"eval.max_tokens={cfg.eval.max_tokens:,}" if cfg.eval.max_tokens else "the whole split"
    return (f"final validation loss: {val_loss:.4f} at step {step} (periodic check: the first "
            f"{tokens:,} tokens of the val split; `metastate eval {t.out_dir} --split val` scores {scope}, "
            f"a different number)")
