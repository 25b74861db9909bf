"""Forward+backward time of the WKV-7 backends and of the Self-State-Encoder read-out.

Prints one table; compare ratios within one run (the machine is shared and noisy).

    python benchmarks/ops_bench.py                     # CPU: reference loop (fp32) vs chunked
    python benchmarks/ops_bench.py --device cuda       # adds fla when importable
    python benchmarks/ops_bench.py --lengths 256 --repeats 1   # quick look

Columns: `loop` = step-loop reference run in fp32; `chunked` = our chunked backend; `sse extra` =
what reading the same states with a second query u adds to a wkv7 call (wkv7_sse minus wkv7);
`2nd scan` = a whole second wkv7 call with query u, the alternative the SSE read-out avoids.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops import wkv7, wkv7_sse  # noqa: E402
from ops.rwkv7 import fla_available, wkv7_reference  # noqa: E402


def make_inputs(B, T, H, N, device):
    g = torch.Generator().manual_seed(0)
    r, k, v, u = (torch.randn(B, T, H, N, generator=g) for _ in range(4))
    w = -0.6065306597 * torch.sigmoid(torch.randn(B, T, H, N, generator=g))
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    a = torch.sigmoid(torch.randn(B, T, H, N, generator=g))
    return [x.to(device).requires_grad_(True) for x in (r, u, w, k, v, -kk, kk * a)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def fwd_bwd_seconds(candidates, inputs, device, repeats):
    """Fastest forward + backward of sum(outputs) for each candidate, run round-robin.

    The minimum over interleaved repeats is the least noisy estimate on a shared machine: load
    from other processes only ever adds time, and interleaving exposes every candidate to it.
    """
    best = {name: float("inf") for name in candidates}
    for i in range(repeats + 1):
        for name, fn in candidates.items():
            for x in inputs:
                x.grad = None
            sync(device)
            start = time.perf_counter()
            sum(o.float().sum() for o in fn()).backward()
            sync(device)
            if i > 0:  # the first round warms up allocators and kernels
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench(T, args, device):
    r, u, w, k, v, a, b = inputs = make_inputs(args.batch, T, args.heads, args.head_size, device)
    backend = "fla" if device.type == "cuda" and fla_available() else "chunked"
    candidates = {
        "chunked": lambda: [wkv7(r, w, k, v, a, b, backend="chunked")[0]],
        "sse": lambda: wkv7_sse(r, u, w, k, v, a, b, backend=backend)[:2],
        "two scans": lambda: [wkv7(r, w, k, v, a, b, backend=backend)[0],
                              wkv7(u, w, k, v, a, b, backend=backend)[0]],
    }
    if backend == "fla":
        candidates["fla"] = lambda: [wkv7(r, w, k, v, a, b, backend="fla")[0]]
    row = {"T": T, **fwd_bwd_seconds(candidates, inputs, device, args.repeats)}
    if not args.skip_loop and device.type == "cpu":
        loop = {"loop": lambda: [wkv7_reference((r,), w, k, v, a, b, compute_dtype=torch.float32)[0][0]]}
        row.update(fwd_bwd_seconds(loop, inputs, device, 1))
    one = row[backend]
    row["sse extra"] = max(row.pop("sse") - one, 0.0)
    row["2nd scan"] = max(row.pop("two scans") - one, 1e-9)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-loop", action="store_true", help="skip the slow step-loop column")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"WKV-7 fwd+bwd, B={args.batch} H={args.heads} N={args.head_size}, fp32, {device} ({where})")
    rows = [bench(T, args, device) for T in args.lengths]
    cols = [c for c in ("loop", "chunked", "fla", "sse extra", "2nd scan") if c in rows[0]]
    header = f"{'T':>6} " + " ".join(f"{c + ' ms':>13}" for c in cols)
    if "loop" in cols:
        header += f" {'loop/chunked':>13}"
    header += f" {'sse/2nd scan':>13}"
    print(header)
    for row in rows:
        line = f"{row['T']:>6} " + " ".join(f"{row[c] * 1e3:>13.1f}" for c in cols)
        if "loop" in cols:
            line += f" {row['loop'] / row['chunked']:>12.1f}x"
        line += f" {row['sse extra'] / row['2nd scan']:>13.2f}"
        print(line)


if __name__ == "__main__":
    main()
