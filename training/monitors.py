"""Small side concerns the trainer calls once per step: throughput/MFU, progress, metrics log."""

import json
import os
import sys
import time

import torch

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment; MFU is reported only for these.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # no meaningful published peak for a CPU
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


class ThroughputMeter:
    """Tokens per second since the previous report, and model FLOPs utilisation when the
    device's peak is known. `flops_per_token` is the model's training FLOPs (fwd + bwd)."""

    def __init__(self, flops_per_token: float, world_size: int, peak: float | None):
        self.flops_per_token = flops_per_token
        self.world_size = world_size
        self.peak = peak
        self._start = time.perf_counter()
        self._tokens = 0

    def add(self, tokens: int) -> None:
        self._tokens += tokens

    def report(self) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self._start, 1e-9)
        tokens_per_s = self._tokens / elapsed
        self._start, self._tokens = now, 0
        metrics = {"tokens_per_s": tokens_per_s}
        if self.peak:
            metrics["mfu"] = tokens_per_s * self.flops_per_token / (self.peak * self.world_size)
        return metrics


class ProgressReporter:
    """A tqdm bar (step, loss, tokens/s, ETA) on a terminal; a plain line every `log_every`
    steps otherwise (batch logs, CI). Only rank 0 reports."""

    def __init__(self, total_steps: int, start_step: int, log_every: int, enabled: bool):
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.total = total_steps
        self.bar = None
        self._started = time.perf_counter()
        self._start_step = start_step
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics.get('tokens_per_s', 0):.0f}")
        elif step % self.log_every == 0 or step == self.total:
            done = step - self._start_step
            eta = (time.perf_counter() - self._started) / max(done, 1) * (self.total - step)
            extras = "".join(f" {k}={v:.4g}" for k, v in metrics.items() if k != "loss")
            print(f"step {step}/{self.total} loss={metrics['loss']:.4f}{extras} eta={eta:.0f}s", flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLog:
    """`metrics.jsonl` in the run directory: one JSON line per logged step (rank 0), readable
    without MLflow and used as a golden-loss record. A resumed run first drops the lines after
    its checkpoint's step (`drop_after`), so each step appears once."""

    def __init__(self, path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def drop_after(self, step: int) -> int:
        """Remove the lines of steps after `step` (a tail the resumed run replays); returns the
        last step the file held (`step` if none was later)."""
        if not self.enabled or not os.path.exists(self.path):
            return step
        kept, last = [], step
        with open(self.path) as f:
            for line in f:
                try:
                    row_step = int(json.loads(line)["step"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill
                last = max(last, row_step)
                if row_step <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)
        return last

    @staticmethod
    def read(path) -> dict[int, dict]:
        """{step: metrics}, later lines winning."""
        rows = {}
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                rows[row["step"]] = row
        return rows
