"""Checks of a run that need no process group and no model, so a bad config fails before any rank
starts (and before a SLURM job queues): mesh vs world size, batch divisibility, vocabulary, data
paths, the checkpoint to resume."""

import os
from pathlib import Path

from data_pipeline.jsonl_reader import expand_paths
from data_pipeline.stats import DataError
from training.checkpointing import resolve_resume
from training.layout import ParallelLayout


def preflight(cfg, layout: ParallelLayout) -> None:
    """Every check that needs no process group, so a bad config fails before any rank starts;
    `layout` is the run's plan_layout (training/layout.py), which checks the ranks itself.

    Example: preflight(cfg, plan_layout(cfg.parallel, world_size=2))
    """
    # here, not at the top: numpy and torch stay out of `metastate --help`
    from data_pipeline.token_corpus import find_token_shards
    from data_pipeline.tokenizer import VOCAB_SIZE
    from training.trainer import check_resume_compatible, gradient_accumulation_steps

    dp_size, world_size = layout.dp_size, layout.world_size
    gradient_accumulation_steps(cfg.train, dp_size)
    if cfg.model.vocab_size < VOCAB_SIZE:  # (tiny model presets have small vocabularies for tests)
        raise ValueError(f"model.vocab_size ({cfg.model.vocab_size}) must hold the tokenizer's "
                         f"{VOCAB_SIZE} token ids (GPT-NeoX-20B) to train; use the default 50304")
    if cfg.data.format == "jsonl":
        check_jsonl_shards(cfg.data, dp_size)
    else:
        find_token_shards(cfg.data.train_path, cfg.data.format)
    if cfg.train.eval_every > 0:
        missing = [p for p in expand_paths(cfg.data.val_path, what="data.val_path")
                   if not os.path.exists(p)]
        if missing:   # else the first periodic validation fails hours into the job
            raise DataError(f"data.val_path={cfg.data.val_path}: {missing[0]} does not exist; point "
                            "data.val_path at the held-out jsonl.zst file(s), or set train.eval_every=0")
    path = resolve_resume(cfg.train.resume, Path(cfg.train.out_dir) / "checkpoints")
    if path is not None:
        check_resume_compatible(path, cfg, world_size)


def check_jsonl_shards(data_cfg, dp_size: int) -> None:
    """Raw jsonl deals whole shards to every reader (data-parallel rank x worker): the count the
    stream would refuse on every rank after the model is built, checked up front."""
    paths = expand_paths(data_cfg.train_path, what="data.train_path", split="train")
    present = [p for p in paths if os.path.exists(p)]
    if not present:
        raise DataError(f"data.train_path={data_cfg.train_path}: no such file or directory; point it "
                        "at jsonl.zst shards (a file, a directory or a glob)")
    readers = dp_size * max(1, data_cfg.num_workers)
    if len(paths) < readers:
        raise DataError(f"data.format=jsonl deals whole shards to {dp_size} data-parallel ranks x "
                        f"{max(1, data_cfg.num_workers)} workers = {readers} readers, but "
                        f"data.train_path={data_cfg.train_path} has only {len(paths)} shards; use at "
                        f"most {len(paths)} readers (fewer ranks or data.num_workers), or preprocess "
                        "to data.format=megatron or wds")
