"""`metastate model ...`: inspect model presets without building them."""

import argparse
import json
import sys

from model.config import state_width
from model.presets import model_preset, preset_names


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="inspect model presets",
                                  description="Inspect model presets (sizes, FLOPs).")
    commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    info = commands.add_parser(
        "info", help="layers, widths, heads, parameters and FLOPs per token of a preset",
        description="Print a preset's architecture, parameter counts and RWKV-aware FLOPs per "
                    "token (matmuls + WKV/meta-state scans; attention for the transformer).",
        epilog=f"example: metastate model info metastate-150m --json\n"
               f"presets: {', '.join(preset_names())}")
    info.add_argument("preset", metavar="PRESET", help="e.g. metastate-150m, rwkv7-450m")
    info.add_argument("--seq-len", type=int, default=4096,
                      help="context length for the transformer's attention FLOPs (4096)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=show_info)


def preset_info(name: str, seq_len: int = 4096) -> dict:
    """The facts `model info` prints, as a dict.

    Example: preset_info("rwkv7-150m")["params_total"] == 152_598_528
    """
    from model.size import model_size  # counts parameters on torch's meta device

    cfg = model_preset(name)
    size = model_size(cfg, seq_len)
    return {
        "preset": name, "family": cfg.family, "layers": cfg.n_layer, "d_model": cfg.d_model,
        "d_state": state_width(cfg), "head_size": cfg.head_size,
        "heads": state_width(cfg) // cfg.head_size, "vocab_size": cfg.vocab_size,
        "params_total": size.total_params, "params_non_embedding": size.non_embedding_params,
        "flops_per_token_forward": size.forward_flops, "flops_per_token_train": size.train_flops,
        "flops_matmul": size.matmul_flops, "flops_scan": size.scan_flops,
        "flops_attention": size.attention_flops, "seq_len": seq_len,
    }


def show_info(args: argparse.Namespace) -> int:
    """Print a preset's sizes. Example: `metastate model info metastate-150m --json`."""
    try:
        info = preset_info(args.preset, args.seq_len)
    except ValueError as error:
        print(f"model info: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['preset']}  ({info['family']})")
    print(f"  layers {info['layers']}   C {info['d_model']}   C_s {info['d_state']}   "
          f"heads {info['heads']} x {info['head_size']}   vocab {info['vocab_size']}")
    print(f"  parameters      {info['params_total']:>15,} total   "
          f"{info['params_non_embedding']:>15,} non-embedding (without emb and head)")
    print(f"  FLOPs / token   {info['flops_per_token_forward']:>15,} forward   "
          f"{info['flops_per_token_train']:>15,} train (3x)")
    print(f"    matmul {info['flops_matmul']:,}   scans {info['flops_scan']:,}   "
          f"attention {info['flops_attention']:,} (at seq_len {info['seq_len']})")
    return 0
