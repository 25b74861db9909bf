"""`metastate preprocess ...` (registered by launch/cli.py through COMMAND_MODULES).

Imports of the tokenizer and writers happen inside the command so that other subcommands do not
pay for them.
"""

import argparse
import json
import os
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="tokenize a Pile-format jsonl.zst corpus into megatron or wds shards",
        description="Tokenize Pile-format jsonl.zst shards (GPT-NeoX-20B, EOS after every "
                    "document) into .bin/.idx or WebDataset tar shards plus a manifest.json.",
        epilog="example: metastate preprocess --input /data/pile --output /data/pile-megatron "
               "--format megatron --workers 16")
    parser.add_argument("--input", required=True,
                        help="a jsonl.zst file, a directory (searched recursively) or a glob")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--format", required=True, choices=("megatron", "wds"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="tokenizer processes (default: all cores)")
    parser.add_argument("--tokenizer", default="tiktoken", choices=("tiktoken", "hf"),
                        help="encoder backend; both give identical ids")
    parser.add_argument("--chunk-tokens", type=int, default=1 << 20,
                        help="wds only: tokens per tar sample (whole documents)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_preprocess)


def run_preprocess(args: argparse.Namespace) -> int:
    """Run `metastate preprocess`; bad input is a one-line error and exit code 2.

    Example: run_preprocess(argparse.Namespace(input="data/embedded", output="out",
    format="megatron", workers=2, tokenizer="tiktoken", chunk_tokens=1 << 20, no_progress=True))
    """
    from data_pipeline.preprocess import preprocess
    from data_pipeline.stats import DataError

    if args.workers < 1 or args.chunk_tokens < 1:
        print("preprocess: --workers and --chunk-tokens must be >= 1", file=sys.stderr)
        return 2
    try:
        manifest = preprocess(args.input, args.output, args.format, args.workers, args.tokenizer,
                              args.chunk_tokens, progress=not args.no_progress)
    except DataError as error:
        print("preprocess: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    summary = {split: {"documents": v["documents"], "tokens": v["tokens"]}
               for split, v in manifest["splits"].items()}
    print(f"wrote {args.output}/manifest.json: {json.dumps(summary)}; "
          f"skipped {manifest['skipped'] or 'nothing'}")
    return 0
