"""The GPU check: everything a first hour on a GPU must tell us, in one bounded command.

    python benchmarks/gpu_check.py --out gpu-check-out           # ~8 min on one H100/H200
    python benchmarks/gpu_check.py --out DIR --stages env,ops    # a subset
    make gpu-check                                               # the same, into gpu-check-out/

Stages, each in its own subprocess with its own timeout (a hang or a crash costs one stage, not
the check), each result written the moment it is known, also while a stage is still running:

    env         GPU, torch / triton / fla versions, measured peak bf16 matmul TFLOP/s
    gpu_tests   `pytest -m gpu`: fla against the chunked backend on CUDA
    ops         WKV-7 fwd+bwd at B=8 T=4096 H=12 N=64 and the Meta-State layer's three
                recurrences, fla and chunked, bf16 and fp32
    train       tokens/s, MFU and peak memory of one training step (bf16 autocast, fla) for the
                150m presets (then 450m while time remains), without and with torch.compile
    loss_curve  `metastate train demo` on the embedded data for --train-seconds: the loss falls

Results: DIR/gpu_check.json (every stage, every row) and DIR/gpu_check.md (the same as Markdown
tables, ready for benchmarks/RESULTS.md). Exit code 0 when no stage failed or timed out (skipped
stages are fine), 1 otherwise. On a machine without CUDA every CUDA stage is skipped with its
reason; `--cpu-plumbing` instead runs every stage on the CPU at toy sizes (tests/benchmarks/
test_gpu_check.py does, so a GPU's minutes are never spent finding a bug in this script).
docs/gpu.md has the cluster recipe.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (name, the most seconds it may take on one H100/H200; the sum stays under 8 minutes)
STAGES = {"env": 30, "gpu_tests": 120, "ops": 75, "train": 150, "loss_curve": 95}
NO_CUDA = "needs CUDA (torch.cuda.is_available() is False here)"


def stage_device(args):
    """CUDA when present; the CPU under --cpu-plumbing; otherwise None (the stage is skipped)."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu") if args.cpu_plumbing else None


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


class StageResult:
    """One stage's JSON file, rewritten after every row so that a killed stage keeps its rows."""

    def __init__(self, out: Path, name: str):
        self.path = out / f"stage-{name}.json"
        self.data = {"stage": name, "status": "running", "rows": []}
        self._write()

    def set(self, **fields) -> None:
        self.data.update(fields)
        self._write()

    def add_row(self, row: dict) -> None:
        self.data["rows"].append(row)
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


# ----------------------------------------------------------------------------- stages (children)

def stage_env(result: StageResult, args) -> None:
    import importlib.metadata as md

    import torch

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    result.set(versions={"python": sys.version.split()[0], "torch": torch.__version__,
                         "triton": version("triton"), "fla-core": version("fla-core"),
                         "cuda": torch.version.cuda or "none"})
    if not torch.cuda.is_available():
        result.set(status="skipped", reason=f"peak TFLOP/s {NO_CUDA}")
        return
    props = torch.cuda.get_device_properties(0)
    n, iters = 8192, 20
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    tflops = 2 * n ** 3 * iters / (time.perf_counter() - start) / 1e12
    result.add_row({"gpu": props.name, "memory GiB": round(props.total_memory / 2 ** 30, 1),
                    "capability": f"{props.major}.{props.minor}", "bf16 matmul TFLOP/s": round(tflops, 1)})
    result.set(status="ok")


def stage_gpu_tests(result: StageResult, args) -> None:
    if stage_device(args) is None:
        result.set(status="skipped", reason=NO_CUDA)
        return
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                           "tests/ops/test_wkv7_fla.py"], cwd=ROOT, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    result.add_row({"command": "pytest -m gpu tests/ops/test_wkv7_fla.py", "exit code": proc.returncode,
                    "summary": lines[-1] if lines else proc.stderr[-500:]})
    result.set(status="ok" if proc.returncode == 0 else "failed", output_tail=proc.stdout[-4000:])


def stage_ops(result: StageResult, args) -> None:
    import torch

    device = stage_device(args)
    if device is None:
        result.set(status="skipped", reason=f"{NO_CUDA}; CPU numbers: benchmarks/ops_bench.py")
        return
    from ops_bench import fwd_bwd_seconds, make_inputs

    from ops.rwkv7 import fla_available

    backends = ["fla", "chunked"] if device.type == "cuda" and fla_available() else ["chunked"]
    B, T, H, N = args.ops_shape
    for dtype in (torch.bfloat16, torch.float32):
        r, u, w, k, v, a, b = inputs = [x.detach().to(dtype).requires_grad_(True)
                                        for x in make_inputs(B, T, H, N, device)]
        for backend in backends:
            seconds = fwd_bwd_seconds(recurrences(backend, r, u, w, k, v, a, b), inputs, device, repeats=3)
            result.add_row({"backend": backend, "dtype": str(dtype).removeprefix("torch."),
                            "WKV-7 fwd+bwd ms": round(seconds["wkv7"] * 1e3, 2),
                            "Meta-State layer (3 recurrences) fwd+bwd ms": round(seconds["layer"] * 1e3, 2)})
    result.set(status="ok", shape=f"B={B} T={T} H={H} N={N}, {device.type}")


def recurrences(backend, r, u, w, k, v, a, b) -> dict:
    """The ops stage's candidates: one WKV-7 scan, and a Meta-State layer's three recurrences
    (TimeMix scan, SSE read-out, meta-state scan over the shared transition)."""
    import torch

    from ops import Wkv7Transition

    def scan():
        return [Wkv7Transition(w, a, b, backend).scan(r, k, v).output]

    def layer():
        transition = Wkv7Transition(w, a, b, backend)
        timemix = transition.scan(r, k, v)
        z = torch.relu(timemix.read(u))
        return [timemix.output, transition.scan(z, z, z).output]

    return {"wkv7": scan, "layer": layer}


def bf16_train_step(model, optimizer, tokens, device):
    """The trainer's step (bf16 autocast, the fused chunked fp32 loss, clip 1.0, AdamW) as a
    closure to time."""
    import torch

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = model(tokens[:, :-1], targets=tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def stage_train(result: StageResult, args) -> None:
    import torch

    device = stage_device(args)
    if device is None:
        result.set(status="skipped", reason=f"{NO_CUDA}; CPU numbers: benchmarks/train_bench.py")
        return
    from model import build_model, model_preset, model_size, parameter_groups
    from ops import OpsConfig
    from training.monitors import peak_flops
    from training.parallelize import apply_compile

    peak = peak_flops(device)
    cuda = device.type == "cuda"
    for size in args.sizes:
        for compiled in (mode == "on" for mode in args.compile):
            for family in ("metastate", "rwkv7", "transformer"):
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                torch.manual_seed(0)
                cfg = model_preset(f"{family}-{size}")
                model = build_model(cfg, OpsConfig(backend="auto"), device=device)
                if compiled:
                    apply_compile(model)
                optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay=0.1), lr=6e-4,
                                              betas=(0.9, 0.99), fused=cuda)
                tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), device=device)
                step = bf16_train_step(model, optimizer, tokens, device)

                start = time.perf_counter()
                for _ in range(2):
                    step()
                synchronize(device)
                warmup_s = time.perf_counter() - start
                times = []
                for _ in range(args.timed_steps):
                    start = time.perf_counter()
                    step()
                    synchronize(device)
                    times.append(time.perf_counter() - start)
                tokens_per_s = args.batch * args.seq_len / min(times)
                flops = model_size(cfg, seq_len=args.seq_len).train_flops
                mfu = round(100 * tokens_per_s * flops / peak, 1) if peak else None
                result.add_row({"model": f"{family}-{size}", "compile": compiled,
                                "tokens/s": round(tokens_per_s), "MFU %": mfu,
                                "peak GiB": round(torch.cuda.max_memory_allocated() / 2 ** 30, 1) if cuda
                                else None,
                                "warm-up s": round(warmup_s, 1)})
                del model, optimizer, step
    result.set(status="ok", shape=f"B={args.batch} T={args.seq_len}, bf16 autocast, ops.backend=auto, "
                                  f"{device.type}")


def stage_loss_curve(result: StageResult, args) -> None:
    device = stage_device(args)
    if device is None:
        result.set(status="skipped", reason=f"{NO_CUDA}; on CPU this is `make demo`")
        return
    out_dir = Path(args.out) / "loss-curve-run"
    # on a GPU: 16 x 1024 tokens a step; under --cpu-plumbing the demo's own 8 x 128
    batch = ["data.seq_len=1024", "train.micro_batch_size=16", "train.global_batch_size=16"] \
        if device.type == "cuda" else []
    cmd = [sys.executable, "-m", "launch.cli", "train", "demo", f"train.out_dir={out_dir}",
           "tracking.backend=none", "train.steps=100000", "train.log_every=10", "train.eval_every=0",
           "checkpoint.every=0", "train.dtype=bf16", "optim.warmup_steps=20", *batch]
    try:
        subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.train_seconds)
    except subprocess.TimeoutExpired:
        pass                                    # the point: train for a fixed time, then read the log
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()] \
        if (out_dir / "metrics.jsonl").exists() else []
    for row in rows[:: max(1, len(rows) // 10)] + rows[-1:]:
        result.add_row({"step": row["step"], "loss": round(row["loss"], 4),
                        "tokens/s": round(row.get("tokens_per_s", 0))})
    falling = len(rows) >= 20 and rows[-1]["loss"] < rows[0]["loss"] - 1.0
    # the CPU's few steps are plumbing: only a GPU run must show the fall
    failed = not rows or (device.type == "cuda" and not falling)
    reason = ("no steps logged" if not rows else "the loss did not fall by a nat (or too few steps)") \
        if failed else None
    result.set(status="failed" if failed else "ok", steps=len(rows), loss_fell_by_a_nat=falling,
               reason=reason)


STAGE_FUNCTIONS = {"env": stage_env, "gpu_tests": stage_gpu_tests, "ops": stage_ops,
                   "train": stage_train, "loss_curve": stage_loss_curve}


# ----------------------------------------------------------------------------- the orchestrator

def markdown(stages: list[dict]) -> str:
    lines = ["# GPU check", ""]
    for stage in stages:
        status = stage["status"] + (f": {stage['reason']}" if stage.get("reason") else "")
        lines += [f"## {stage['stage']} ({status}, {stage.get('seconds', 0):.0f} s)", ""]
        for key in ("versions", "shape"):
            if stage.get(key):
                lines += [f"{key}: {stage[key]}", ""]
        rows = stage.get("rows", [])
        if rows:
            columns = list(dict.fromkeys(c for row in rows for c in row))
            lines.append("| " + " | ".join(columns) + " |")
            lines.append("|" + "---|" * len(columns))
            lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
            lines.append("")
    return "\n".join(lines)


def run_stage(name: str, timeout_s: float, args) -> dict:
    out = Path(args.out)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--out", str(out),
           "--train-seconds", str(args.train_seconds), "--sizes", *args.sizes,
           "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--timed-steps", str(args.timed_steps),
           "--ops-shape", *map(str, args.ops_shape), "--compile", *args.compile,
           *(["--cpu-plumbing"] if args.cpu_plumbing else [])]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"})
        error = None if proc.returncode == 0 else proc.stderr.strip()[-2000:]
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout_s:.0f} s (rows so far kept)"
    path = out / f"stage-{name}.json"
    stage = json.loads(path.read_text()) if path.exists() else {"stage": name, "rows": []}
    if error is not None:
        stage.update(status="timeout" if "timed out" in error else "failed",
                     reason=error.splitlines()[-1] if error else "no output")
        stage["error"] = error
    stage["seconds"] = time.perf_counter() - start
    return stage


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md, stage files")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list from {','.join(STAGES)}")
    p.add_argument("--budget-s", type=float, default=sum(STAGES.values()),
                   help="wall-clock budget of the whole check (default: the stages' sum, 470 s)")
    p.add_argument("--train-seconds", type=float, default=60, help="length of the loss_curve run")
    p.add_argument("--sizes", nargs="+", default=["150m", "450m"], help="presets of the train stage")
    p.add_argument("--batch", type=int, default=8, help="train stage batch")
    p.add_argument("--seq-len", type=int, default=4096, help="train stage context")
    p.add_argument("--timed-steps", type=int, default=3)
    p.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"],
                   help="train stage: without and/or with torch.compile")
    p.add_argument("--ops-shape", type=int, nargs=4, default=[8, 4096, 12, 64], metavar=("B", "T", "H", "N"))
    p.add_argument("--cpu-plumbing", action="store_true",
                   help="without CUDA, run every stage on the CPU (use toy sizes: see the test)")
    p.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)   # a child process
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage:
        result = StageResult(out, args.stage)
        STAGE_FUNCTIONS[args.stage](result, args)
        return 0
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        print(f"gpu_check: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.budget_s
    stages = []
    for name in wanted:
        left = deadline - time.monotonic()
        if left < 5:
            stage = {"stage": name, "status": "skipped", "reason": "no time left in --budget-s", "rows": []}
        else:
            timeout_s = min(STAGES[name], left)
            if name == "loss_curve":
                timeout_s = min(max(timeout_s, args.train_seconds + 30), left)
            stage = run_stage(name, timeout_s, args)
        stages.append(stage)
        reason = f" ({stage['reason']})" if stage.get("reason") else ""
        print(f"gpu_check: {name}: {stage['status']}{reason}", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(stages, indent=1, default=str))
        (out / "gpu_check.md").write_text(markdown(stages))
    print(f"gpu_check: results in {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    return 0 if all(s["status"] in ("ok", "skipped") for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
