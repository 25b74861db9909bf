"""Generation speed on CPU fp32: our model vs the official `rwkv` package, same weights.

An rwkv7 model of `--layers` x `--d-model` (default 12 x 768, vocab 50304, random weights with
noise on every parameter) is exported with `export_rwkv7_checkpoint` and loaded by both
runtimes, each in its own subprocess with `--threads` torch threads (the package reads its
switches from the environment and changes global torch settings at import):

- `prefill tok/s`: one parallel pass over a `--prompt` token prompt (ours: `model(prompt)`;
  the package: `model.forward(prompt, None)`), fastest of `--repeats`;
- `decode tok/s`: `--decode` single-token steps carrying the state (ours: `model.step` after
  `model.prepare_for_decode()`, as the generation loop calls them), fastest of `--repeats`
  timed loops after 3 warm-up steps;
- `weight reads` (a floor, not a runtime): one `F.linear` matrix-vector product per weight
  matrix of the rwkv7 model (head included, row-major as loaded) and nothing else, i.e. what
  any fp32 runtime that reads each weight once per token must spend; decode at B = 1 is bound
  by it. `weight reads, decode layout`: the same with the layout `prepare_for_decode` gives
  (column-major where out_features >= in_features), the floor for our decode step.

`ours rwkv7 scripted` is the same model after `prepare_for_decode(script=True)` (TorchScript
one-token TimeMix and ChannelMix, opt-in). Our metastate and transformer families (the same
width and depth, random weights) are timed the same way; the package has no counterpart for
them. Runtimes alternate over `--rounds` rounds so that they share the machine's load. It
prints numbers only; nothing is asserted.

    python benchmarks/generation_bench.py                 # the Markdown table (~2 min on 2 cores)
    python benchmarks/generation_bench.py --rounds 1 --decode 20
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNTIMES = ("ours rwkv7", "rwkv package", "ours rwkv7 scripted", "ours metastate",
            "ours transformer", "weight reads", "weight reads, decode layout")


def prompt_tokens(n: int) -> list[int]:
    import torch

    return torch.randint(0, 50000, (n,), generator=torch.Generator().manual_seed(0)).tolist()


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def time_ours(family: str, args, path: str, script: bool = False) -> dict:
    import torch

    from model import build_model, import_rwkv7_checkpoint, model_preset
    from ops import OpsConfig

    ops_cfg = OpsConfig(backend="chunked")
    if family == "rwkv7":
        model = import_rwkv7_checkpoint(path, ops_cfg)
    else:
        torch.manual_seed(0)
        model = build_model(model_preset(f"{family}-150m", n_layer=args.layers,
                                         d_model=args.d_model), ops_cfg)
    model.eval()
    if not args.row_major:
        model.prepare_for_decode(script=script)   # as generation does (model/generate.py)
    prompt = torch.tensor([prompt_tokens(args.prompt)])
    token = prompt[:, -1]
    with torch.no_grad():
        prefill = best_seconds(lambda: model(prompt), args.repeats)
        _, state = model(prompt)
        for _ in range(3):
            _, state = model.step(token, state)

        def decode():   # the generation loop's call (model/generate.py)
            step_state = state
            for _ in range(args.decode):
                _, step_state = model.step(token, step_state)

        decode_s = best_seconds(decode, args.repeats)
    return {"prefill": args.prompt / prefill, "decode": args.decode / decode_s}


def time_weight_reads(args, path: str, decode_layout: bool = False) -> dict:
    import torch
    import torch.nn.functional as F

    weights = [t for name, t in torch.load(path, map_location="cpu").items()
               if t.dim() == 2 and min(t.shape) > 1 and name != "emb.weight"]
    if decode_layout:   # LanguageModel.prepare_for_decode's rule
        weights = [w.t().contiguous().t() if w.shape[0] >= w.shape[1] else w for w in weights]
    x = {n: torch.randn(1, n) for n in {w.shape[1] for w in weights}}

    def read_all():
        for _ in range(args.decode):
            for w in weights:
                F.linear(x[w.shape[1]], w)

    read_all()
    return {"prefill": float("nan"), "decode": args.decode / best_seconds(read_all, args.repeats)}


def time_package(args, path: str) -> dict:
    os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
    import torch
    from rwkv.model import RWKV

    torch.set_num_threads(args.threads)   # the package's import may change torch settings
    model = RWKV(model=path.removesuffix(".pth"), strategy="cpu fp32")
    prompt = prompt_tokens(args.prompt)
    with torch.no_grad():
        prefill = best_seconds(lambda: model.forward(prompt, None), args.repeats)
        _, state = model.forward(prompt, None)
        for _ in range(3):
            _, state = model.forward(prompt[-1:], state)

        def decode():
            step_state = [s.clone() for s in state]
            for _ in range(args.decode):
                _, step_state = model.forward(prompt[-1:], step_state)

        decode_s = best_seconds(decode, args.repeats)
    return {"prefill": args.prompt / prefill, "decode": args.decode / decode_s}


def export_weights(args, directory: str) -> str:
    import torch

    from model import build_model, export_rwkv7_checkpoint, model_preset
    from ops import OpsConfig

    torch.manual_seed(0)
    model = build_model(model_preset("rwkv7-150m", n_layer=args.layers, d_model=args.d_model),
                        OpsConfig(backend="chunked"))
    with torch.no_grad():   # noise on the zero inits so that every weight takes part
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return str(export_rwkv7_checkpoint(model, Path(directory) / "bench.pth"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--row-major", action="store_true",
                        help="time ours without prepare_for_decode's weight layout")
    parser.add_argument("--one", nargs=2, metavar=("RUNTIME", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        runtime, path = args.one
        if runtime == "rwkv package":
            result = time_package(args, path)
        elif runtime.startswith("weight reads"):
            result = time_weight_reads(args, path, decode_layout=runtime.endswith("layout"))
        else:
            result = time_ours(runtime.split()[1], args, path, script=runtime.endswith("scripted"))
        print(json.dumps(result))
        return
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k not in ("one", "row_major")] + (["--row-major"] if args.row_major else [])
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as directory:
        path = export_weights(args, directory)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        for _ in range(args.rounds):
            for runtime in RUNTIMES:
                out = subprocess.run([sys.executable, __file__, *forwarded, "--one", runtime, path],
                                     capture_output=True, text=True, env=env, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                kept = best.setdefault(runtime, result)
                for key in result:
                    kept[key] = max(kept[key], result[key])
    official = best["rwkv package"]
    print(f"{args.layers} layers x {args.d_model}, vocab 50304, CPU fp32, {args.threads} threads, "
          f"prompt {args.prompt}, {args.decode} decode steps; best of {args.rounds} rounds x "
          f"{args.repeats} repeats\n")
    print("| runtime | prefill tok/s | vs package | decode tok/s | vs package |")
    print("|---|---:|---:|---:|---:|")
    for runtime in RUNTIMES:
        row = best[runtime]
        prefill = (f"{row['prefill']:.1f} | {row['prefill'] / official['prefill']:.2f}x"
                   if row["prefill"] == row["prefill"] else "- | -")   # NaN: no prefill
        print(f"| {runtime} | {prefill} | {row['decode']:.1f} | "
              f"{row['decode'] / official['decode']:.2f}x |")


if __name__ == "__main__":
    main()
