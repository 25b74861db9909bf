"""The training loop. Side concerns (checkpoints, tracking, throughput, progress, the non-finite
guard) are objects built in `Trainer.__init__`; `train_step` and `run` are the whole loop."""

import contextlib
import json
import logging
import subprocess
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from data_pipeline.train_stream import build_train_stream
from model import build_model, model_size
from model.token_ids import check_token_range
from training.checkpointing import (
    CheckpointError,
    CheckpointManager,
    find_latest,
    list_complete,
    read_manifest,
    resolve_resume,
    step_of,
)
from training.distributed import DistEnv
from training.engine_interface import EngineSetup
from training.engines import build_engine
from training.layout import ParallelLayout, plan_layout
from training.lineage import FreezeOld, lineage_tags
from training.monitors import MetricsLog, ProgressReporter, ThroughputMeter, peak_flops
from training.parallelize import parallelize
from training.preemption import PreemptionHandler, StopRequest
from training.run_lock import RunLock
from training.schedule import apply_optimizer_settings, optimizer_settings, start_rewarm
from training.stability import NonFiniteGuard, TrainingDiverged
from training.tracking import MlflowTracker, default_tracking_uri, flatten
from training.validation import ValidationWindows

log = logging.getLogger("metastate.train")


def gradient_accumulation_steps(train_cfg, dp_size: int) -> int:
    """global_batch_size = micro_batch_size x dp ranks x accumulation steps, exactly."""
    per_pass = train_cfg.micro_batch_size * dp_size
    if train_cfg.global_batch_size % per_pass:
        raise ValueError(
            f"train.global_batch_size={train_cfg.global_batch_size} is not a multiple of "
            f"train.micro_batch_size={train_cfg.micro_batch_size} x {dp_size} data-parallel ranks; "
            f"pick a global batch that is a multiple of {per_pass}")
    return train_cfg.global_batch_size // per_pass


def compute_dtype(train_cfg, device: torch.device) -> torch.dtype:
    if train_cfg.dtype == "bf16" or (train_cfg.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def check_resume_compatible(path: Path, cfg, world_size: int) -> None:
    """A checkpoint resumes only under a backend that reads its format; DeepSpeed's ZeRO
    partitions also need the same world size (DCP checkpoints reshard to any)."""
    manifest = read_manifest(path)
    saved_model = manifest.get("config", {}).get("model")
    wanted_model = OmegaConf.to_container(cfg.model, resolve=True)
    if saved_model is not None and saved_model != wanted_model:
        changed = sorted(k for k in set(saved_model) | set(wanted_model)
                         if saved_model.get(k) != wanted_model.get(k))
        saved = ", ".join(f"model.{k}={saved_model.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"{path} holds a different model ({saved}; this run asks for "
            f"{', '.join(f'{wanted_model.get(k)!r}' for k in changed)}); resume with the "
            "checkpoint's model, or grow it first with `metastate expand`")
    saved_format, saved_world = manifest.get("format"), manifest.get("world_size")
    wanted = "deepspeed" if cfg.parallel.backend == "deepspeed" else "dcp"
    if saved_format != wanted:
        raise CheckpointError(
            f"{path} is a {saved_format} checkpoint but parallel.backend={cfg.parallel.backend} reads "
            f"{wanted}; resume with the backend that wrote it, or export it and start from the weights")
    if saved_format == "deepspeed" and saved_world != world_size:
        raise CheckpointError(
            f"{path} holds DeepSpeed ZeRO partitions for {saved_world} ranks, this run has {world_size}; "
            f"resume on {saved_world} ranks (FSDP2 checkpoints reshard, ZeRO ones do not)")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


class Trainer:
    """Owns one training run. Components get their own config section; only this class sees the
    whole tree (to save it in checkpoints and log it as parameters).

    Example:
        >>> Trainer(load_run_config("demo", ["train.steps=50"]), init_distributed()).run()
    """

    def __init__(self, cfg, env: DistEnv, config_name: str = "", layout: ParallelLayout | None = None,
                 checkpoint_root: Path | None = None, tags: dict[str, str] | None = None):
        self.cfg, self.env, self.config_name = cfg, env, config_name
        # a staged run keeps each stage's checkpoints apart (launch/stages.py) and tags its runs
        self.checkpoint_root = Path(checkpoint_root or Path(cfg.train.out_dir) / "checkpoints")
        self.extra_tags = dict(tags or {})
        # this process's layout, mesh built: `metastate train` passes the one preflight planned
        self.layout = layout or plan_layout(cfg.parallel, env.world_size, env.rank).with_mesh(env.device.type)
        # first, so that SIGUSR1 during model build or resume is a request, not the default kill
        self.preemption = PreemptionHandler(env.all_reduce_sum).install()
        self.stop_request: StopRequest | None = None
        # before anything is written: one live writer per out_dir (rank 0 takes it for the job)
        self.run_lock = RunLock(Path(cfg.train.out_dir)).acquire() if env.is_rank0 else None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        cfg, env = self.cfg, self.env
        tc = cfg.train
        self.out_dir = Path(tc.out_dir)
        # the tensor-parallel ranks of one data-parallel group read the same batches
        self.dp_rank, self.dp_size = self.layout.dp_rank, self.layout.dp_size
        self.accum = gradient_accumulation_steps(tc, self.dp_size)
        self.dtype = compute_dtype(tc, env.device)
        torch.manual_seed(tc.seed)  # identical init on every rank (FSDP2/ZeRO shard a full model)
        self.model = build_model(cfg.model, cfg.ops, device=env.device)
        # tensor parallel -> recompute -> compile -> FSDP2/DDP, on this process's one layout
        net = parallelize(self.model, self.layout, tc, env.device, self.dtype)
        setup = EngineSetup(cfg.optim, cfg.train, cfg.parallel, env, self.accum, self.dtype)
        self.engine = build_engine(self.model, net, setup)
        self.stream = build_train_stream(cfg.data, self.dp_rank, self.dp_size, tc.micro_batch_size)
        self.validation = (ValidationWindows(cfg.data, tc.micro_batch_size, tc.eval_batches, env,
                                             (self.dp_rank, self.dp_size))
                           if tc.eval_every > 0 else None)
        self.guard = NonFiniteGuard(tc.max_bad_steps)
        self.checkpoints = CheckpointManager(self.checkpoint_root, cfg.checkpoint.keep_last,
                                             env.is_rank0, env.barrier, env.any_rank)
        self.tracker = MlflowTracker(cfg.tracking, self.out_dir, enabled=env.is_rank0)
        self.metrics_log = MetricsLog(self.out_dir / "metrics.jsonl", enabled=env.is_rank0)
        size = model_size(cfg.model, cfg.data.seq_len)
        self.throughput = ThroughputMeter(size.train_flops, env.world_size, peak_flops(env.device))
        self.step = 0
        self.tokens_seen = 0
        self.last_val_loss: float | None = None
        self.lineage: dict | None = None      # set when this run descends from `metastate expand`
        self.freeze: FreezeOld | None = None  # set when that expansion asked for --freeze-old
        self.freeze_until: int | None = None  # the last frozen step, when only some steps are
        self.settings_changed = False         # resumed with other optimiser/schedule settings
        self.logged_until = 0                 # MLflow already holds the steps up to this one
        self._resume(resolve_resume(tc.resume, self.checkpoint_root))

    # ------------------------------------------------------------------ resume / save

    def _resume(self, path: Path | None) -> None:
        run_id = None
        if path is not None:
            check_resume_compatible(path, self.cfg, self.env.world_size)
            settings = optimizer_settings(self.engine.scheduler)  # this config's, before the load
            extras = self.engine.load(path)
            apply_optimizer_settings(self.engine.scheduler, settings)
            self.guard.load_state_dict(extras["guard"])
            self.stream.load_state_dict(extras["data"])
            self.step, self.tokens_seen = int(extras["step"]), int(extras["tokens_seen"])
            manifest = read_manifest(path)
            run_id = manifest.get("mlflow_run_id")
            self.last_val_loss = manifest.get("val_loss")
            self._continue_lineage(manifest.get("lineage"))
            log.info("resumed from %s at step %d", path, self.step)
            self.settings_changed = self._report_changed_settings(manifest.get("config", {}))
        # each step once in metrics.jsonl and MLflow: the steps after the checkpoint that an
        # earlier (killed) process logged are replayed now
        self.logged_until = self.metrics_log.drop_after(self.step)
        config = OmegaConf.to_container(self.cfg, resolve=True)
        if self.env.is_rank0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg))
        tags = {"family": self.cfg.model.family, "world_size": self.env.world_size,
                "parallel": self.cfg.parallel.backend, "git_commit": git_commit(),
                "preset": self.config_name or "custom", **lineage_tags(self.lineage), **self.extra_tags}
        self.tracker.start(params=flatten(config), tags=tags, run_id=run_id)
        self.tracker.log_artifact(self.out_dir / "config.yaml")

    def _report_changed_settings(self, saved: dict) -> bool:
        """Say which optimiser and schedule settings differ from the checkpoint's: they apply from
        the resumed step (docs/training.md, "Resuming with changed settings")."""
        now = OmegaConf.to_container(self.cfg, resolve=True)
        keys = [("optim", k) for k in now["optim"]] + [("train", "steps")]
        changes = [f"{a}.{b} {saved[a][b]!r} -> {now[a][b]!r}" for a, b in keys
                   if a in saved and b in saved[a] and saved[a][b] != now[a][b]]
        if changes and self.env.is_rank0:
            log.warning("resume: %s differ from the checkpoint; applied from step %d (the lr of "
                        "each step is recomputed from this config; weights, AdamW moments, data "
                        "position and RNG are the checkpoint's)", ", ".join(changes), self.step + 1)
        return bool(changes)

    def _continue_lineage(self, lineage: dict | None) -> None:
        """A run grown by `metastate expand`: re-warm the lr from the expansion step, keep the old
        entries frozen if asked, and carry the lineage into this run's checkpoints."""
        if not lineage:
            return
        self.lineage = lineage
        start_rewarm(self.engine.scheduler, self.engine.rewarm, int(lineage["parent_step"]))
        if lineage.get("freeze_old"):
            if self.cfg.parallel.backend != "none":
                raise CheckpointError(f"this checkpoint was expanded with --freeze-old, which trains "
                                      f"with parallel.backend=none only (got {self.cfg.parallel.backend})")
            self.freeze = FreezeOld(self.model, lineage["old_shapes"])
            if lineage.get("freeze_old_steps"):
                self.freeze_until = int(lineage["parent_step"]) + int(lineage["freeze_old_steps"])

    def save_checkpoint(self) -> Path:
        data_state = self.stream.state_dict()  # a collective for raw jsonl streams: every rank calls it
        extras = {"step": self.step, "tokens_seen": self.tokens_seen, "data": data_state,
                  "guard": self.guard.state_dict()}
        self.tracker.flush()  # so the run exists and its id goes into the manifest when possible
        manifest = {"config": OmegaConf.to_container(self.cfg, resolve=True), "tokens_seen": self.tokens_seen,
                    "mlflow_run_id": self.tracker.run_id, "world_size": self.env.world_size,
                    "format": self.engine.checkpoint_format, "val_loss": self.last_val_loss,
                    "lineage": self.lineage}
        path = self.checkpoints.save(self.step, lambda d: self.engine.save(d, extras), manifest)
        if self.env.is_rank0:
            copy = self.out_dir / "manifests" / f"{path.name}.json"
            copy.parent.mkdir(exist_ok=True)
            copy.write_text(json.dumps(read_manifest(path), indent=2, default=str))
            self.tracker.log_artifact(copy, "checkpoints")
        return path

    # ------------------------------------------------------------------ the loop

    def autocast(self):
        # DeepSpeed's bf16 mode keeps bf16 weights itself; autocast is for FSDP2/DDP/single runs
        if self.dtype == torch.bfloat16 and self.cfg.parallel.backend != "deepspeed":
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, batches) -> dict[str, float]:
        """One optimizer step over `accum` micro-batches; returns the step's metrics."""
        loss_sum = torch.zeros((), device=self.env.device)
        for micro, batch in enumerate(batches):
            # ids are checked here, on the host, once per batch; the model never syncs to check
            check_token_range(batch["tokens"], self.cfg.model.vocab_size, "training batch")
            tokens = batch["tokens"].to(self.env.device, non_blocking=True)
            with self.engine.accumulating(micro == self.accum - 1), self.autocast():
                # the head and the loss fused in chunks: no [B, T, V] logits (ops.loss_chunk_size)
                loss, _ = self.engine.net(tokens[:, :-1], targets=tokens[:, 1:])
            self.engine.backward(loss)
            loss_sum += loss.detach()
        loss_value = self.env.all_reduce_sum(loss_sum / self.accum).item() / self.env.world_size
        lr = self.engine.lr
        freeze = self.freeze if self.freeze_until is None or self.step < self.freeze_until else None
        if freeze is not None:
            freeze.mask_grads()
        grad_norm = self.engine.step(loss_value, self.guard, self.step + 1)
        if freeze is not None:
            freeze.restore()
        return {"loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                "skipped_steps": float(self.guard.skipped_total)}

    def run(self, until_step: int | None = None) -> dict[str, float]:
        """Train to train.steps (or `until_step`, a staged run's stage end), with a checkpoint at
        the last step; returns the last step's metrics, step and val_loss."""
        tc, ckpt = self.cfg.train, self.cfg.checkpoint
        progress = ProgressReporter(tc.steps, self.step, tc.log_every, self.env.is_rank0)
        batches = iter(self.stream)
        tokens_per_step = tc.global_batch_size * self.cfg.data.seq_len
        metrics: dict[str, float] = {}
        status = "FAILED"
        last_step = tc.steps if tc.stop_after <= 0 else min(tc.steps, self.step + tc.stop_after)
        last_step = last_step if until_step is None else min(last_step, until_step)
        postponed = False
        try:
            while self.step < last_step:
                metrics = self.train_step([next(batches) for _ in range(self.accum)])
                self.step += 1
                self.tokens_seen += tokens_per_step
                self.throughput.add(tokens_per_step)
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    metrics.update(self.throughput.report())
                if self.validation is not None and (self.step % tc.eval_every == 0 or self.step == tc.steps):
                    self.last_val_loss = self.validation.loss(self.engine.net, self.autocast)
                    metrics["val_loss"] = self.last_val_loss
                    progress.message(f"step {self.step}: val_loss={self.last_val_loss:.4f}")
                if self.step > self.logged_until or self.settings_changed:
                    self.tracker.log_metrics(self.step, metrics)  # a replayed step is already there
                self.metrics_log.write(self.step, metrics)
                progress.update(self.step, metrics)
                due = (ckpt.every > 0 and self.step % ckpt.every == 0) or self.step == last_step
                saved = False
                if due or postponed:
                    if self.guard.skipped_in_a_row == 0:
                        path, saved, postponed = self._save_and_report(progress), True, False
                    elif not postponed:  # never publish weights while the steps are non-finite
                        postponed = True
                        progress.message(f"step {self.step}: checkpoint postponed: the last "
                                         f"{self.guard.skipped_in_a_row} step(s) were non-finite")
                if self.step < last_step:
                    self.stop_request = self.preemption.poll()  # one collective, every rank
                if self.stop_request is not None:
                    if not saved:
                        path = self._save_and_report(progress)
                    progress.message(f"step {self.step}: {self.stop_request.signal_name} received; "
                                     f"checkpoint {path}, stopping")
                    break
            status = "FINISHED" if self.stop_request is None else "KILLED"
        except TrainingDiverged as err:
            diverged = TrainingDiverged(f"{err}; {self._set_aside_diverged()}")
            progress.message(f"stopped: {diverged}")
            raise diverged from None
        finally:
            progress.close()
            self.preemption.close()
            self.tracker.finish(status)
            self.close()
        return {**metrics, "step": self.step, "val_loss": self.last_val_loss}

    def _set_aside_diverged(self) -> str:
        """The weights of the step before a non-finite streak produced it (skipped steps change
        nothing): a checkpoint of that step or later would diverge again, whatever the lr, so it is
        renamed `diverged-step-N` and resume=auto takes the one before. Returns the advice."""
        first_bad = self.step + 2 - self.guard.skipped_in_a_row  # self.step: the last applied step
        root = self.checkpoints.root
        set_aside = [p for p in list_complete(root) if step_of(p) >= first_bad - 1]
        self.env.barrier()
        if self.env.is_rank0:
            for path in set_aside:
                target = root / f"diverged-{path.name}"
                for n in range(2, 1000):  # an earlier divergence set aside the same step: keep both
                    if not target.exists():
                        break
                    target = root / f"diverged-{path.name}.{n}"
                path.replace(target)
        self.env.barrier()
        good = find_latest(root)
        moved = (f"{', '.join(p.name for p in set_aside)} (the weights that diverged) set aside as "
                 f"diverged-*; " if set_aside else "")
        then = (f"it continues from {good}" if good is not None
                else "no earlier checkpoint exists, so it starts over")
        return (f"{moved}lower optim.lr (or raise optim.warmup_steps) and rerun with "
                f"train.resume=auto: {then}")

    def close(self) -> None:
        """Release the run directory (run() does this when it ends)."""
        if self.run_lock is not None:
            self.run_lock.release()

    def _save_and_report(self, progress: ProgressReporter) -> Path:
        # the write time is what launch.signal_grace_s must cover (docs/slurm.md)
        start = time.perf_counter()
        path = self.save_checkpoint()
        progress.message(f"step {self.step}: checkpoint {path} ({time.perf_counter() - start:.1f} s)")
        return path

    def how_to_view(self) -> str:
        uri = self.cfg.tracking.uri or default_tracking_uri(self.out_dir)
        if self.cfg.tracking.backend != "mlflow":
            return "tracking disabled (tracking.backend=none)"
        if uri.startswith("sqlite:"):
            return f"mlflow ui --backend-store-uri {uri}   # then open http://127.0.0.1:5000"
        return f"open {uri}"
