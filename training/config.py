"""Training configuration: the `optim`, `train`, `parallel`, `checkpoint` and `tracking` sections.

Each section is its own schema so that a component receives only the part it uses (the optimizer
builder gets `cfg.optim`, the checkpointer `cfg.checkpoint`, ...). Each section owns its rules (`problems()`);
launch/config_checks.py collects them when a run config is loaded and adds the cross-section ones.
"""

from dataclasses import dataclass, field

from ops.config_rules import Problem, choice_problems, range_problems

TRAIN_DTYPES = ("auto", "fp32", "bf16")
PARALLEL_BACKENDS = ("none", "fsdp2", "deepspeed")
ZERO_STAGES = (1, 2, 3)
TRACKING_BACKENDS = ("mlflow", "none")


@dataclass
class OptimConfig:
    # AdamW with a linear warm-up, then cosine decay to lr * min_lr_ratio (RWKV-7 recipe values).
    lr: float = 6e-4                   # peak learning rate
    min_lr_ratio: float = 0.1          # final lr as a fraction of the peak
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-18                 # RWKV-LM's value: keeps Adam steps large for tiny grads
    weight_decay: float = 0.1          # applied to 2-D `.weight` matrices only
    w0_lr_mult: float = 2.0            # the decay bias w0 trains at this multiple of lr
    warmup_steps: int = 100
    rewarm_steps: int = 100            # after `metastate expand`: lr ramps up again over this many
                                       # steps from the expansion step; 0 = no re-warm
    grad_clip: float = 1.0             # global grad-norm clip; 0 disables clipping

    def problems(self) -> list[Problem]:
        """This section's own rules; [] when it is valid."""
        problems = range_problems(self, "optim", {
            "min_lr_ratio": 0, "weight_decay": 0, "warmup_steps": 0, "rewarm_steps": 0, "grad_clip": 0},
            positives=("lr", "eps", "w0_lr_mult"))
        if self.min_lr_ratio > 1:
            problems.append((f"optim.min_lr_ratio must be <= 1, got {self.min_lr_ratio}",
                             ("optim.min_lr_ratio",)))
        betas = list(self.betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            problems.append((f"optim.betas must be two numbers in [0, 1), got {betas}", ("optim.betas",)))
        return problems


@dataclass
class TrainConfig:
    steps: int = 1000                  # optimizer steps (the lr schedule spans all of them)
    stop_after: int = 0                # leave after this many steps in this job, with a checkpoint
                                       # (fits a job time limit; resume=auto goes on); 0 = no limit
    global_batch_size: int = 32        # sequences per optimizer step, summed over ranks
    micro_batch_size: int = 8          # sequences per rank per forward pass
    seed: int = 1234                   # model init and dropout seed (data order: data.seed)
    out_dir: str = "runs/default"      # checkpoints, logs and the tracking store live here
    resume: str = "none"               # none | auto (latest in out_dir) | path to a checkpoint
    eval_every: int = 200              # steps between validation passes; 0 disables
    eval_batches: int = 8              # micro-batches per validation pass
    log_every: int = 10                # steps between metric logs
    max_bad_steps: int = 5             # consecutive non-finite losses skipped before aborting
    dtype: str = "auto"                # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False              # torch.compile each block
    activation_checkpointing: bool = False  # recompute each block in backward to save memory

    def problems(self) -> list[Problem]:
        """This section's own rules; [] when it is valid."""
        problems = choice_problems(self, "train", {"dtype": TRAIN_DTYPES})
        problems += range_problems(self, "train", {
            "steps": 1, "global_batch_size": 1, "micro_batch_size": 1, "eval_every": 0, "eval_batches": 1,
            "log_every": 1, "max_bad_steps": 1, "stop_after": 0})
        if self.micro_batch_size >= 1 and self.global_batch_size % self.micro_batch_size:
            problems.append((f"train.global_batch_size ({self.global_batch_size}) must be a multiple of "
                             f"train.micro_batch_size ({self.micro_batch_size})",
                             ("train.global_batch_size", "train.micro_batch_size")))
        if not self.resume.strip():
            problems.append(("train.resume must be none, auto or a checkpoint path, got ''",
                             ("train.resume",)))
        return problems


@dataclass
class ParallelConfig:
    backend: str = "none"              # none (single process or DDP) | fsdp2 | deepspeed
    zero_stage: int = 3                # DeepSpeed ZeRO stage 1 | 2 | 3 (fsdp2 always shards fully)
    tp: int = 1                        # tensor-parallel degree; must divide the state heads
    dp: int = -1                       # data-parallel degree; -1 = world_size / tp

    def problems(self) -> list[Problem]:
        """This section's own rules; [] when it is valid."""
        problems = choice_problems(self, "parallel", {"backend": PARALLEL_BACKENDS,
                                                      "zero_stage": ZERO_STAGES})
        problems += range_problems(self, "parallel", {"tp": 1})
        if self.dp != -1 and self.dp < 1:
            problems.append((f"parallel.dp must be -1 (world_size / tp) or >= 1, got {self.dp}",
                             ("parallel.dp",)))
        # the one place that says DeepSpeed means tp = 1 (its engine and parallelize rely on it)
        if self.backend == "deepspeed" and self.tp != 1:
            problems.append((f"parallel.tp must be 1 with parallel.backend=deepspeed (ZeRO has no tensor "
                             f"parallel here), got {self.tp}; use parallel.backend=fsdp2 for tp > 1",
                             ("parallel.tp", "parallel.backend")))
        return problems


@dataclass
class CheckpointConfig:
    every: int = 500                   # steps between checkpoints; 0 = only at the end
    keep_last: int = 3                 # newest checkpoints kept on disk; 0 keeps all

    def problems(self) -> list[Problem]:
        """This section's own rules; [] when it is valid."""
        return range_problems(self, "checkpoint", {"every": 0, "keep_last": 0})


@dataclass
class TrackingConfig:
    backend: str = "mlflow"            # mlflow | none
    uri: str = ""                      # tracking URI; "" = local sqlite under train.out_dir
    experiment: str = "metastate"      # MLflow experiment name
    run_name: str = ""                 # "" = the basename of train.out_dir

    def problems(self) -> list[Problem]:
        """This section's own rules; [] when it is valid."""
        problems = choice_problems(self, "tracking", {"backend": TRACKING_BACKENDS})
        if self.backend == "mlflow" and not self.experiment.strip():
            problems.append(("tracking.experiment must name an MLflow experiment when "
                             "tracking.backend=mlflow", ("tracking.experiment",)))
        return problems
