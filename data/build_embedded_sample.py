"""Rebuild data/embedded/ (the default dataset) from the shared Pile-format corpus.

Keeps 2 of every 5 documents of each train shard (all subsets stay represented) and the whole
val and test files, recompressed with zstd level 19 and frame checksums so corruption is detected.
Usage: python data/build_embedded_sample.py /work/shared/data/corpus data/embedded
"""

import sys
from pathlib import Path

import zstandard

KEEP_OF_EVERY_FIVE = (0, 2)


def rewrite(source: Path, target: Path, keep_all: bool) -> int:
    with open(source, "rb") as handle:
        lines = zstandard.ZstdDecompressor().decompress(handle.read(),
                                                        max_output_size=1 << 31).splitlines()
    kept = [line for i, line in enumerate(lines) if keep_all or i % 5 in KEEP_OF_EVERY_FIVE]
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = b"".join(line + b"\n" for line in kept)
    target.write_bytes(zstandard.ZstdCompressor(level=19, write_checksum=True).compress(payload))
    return target.stat().st_size


def main(corpus: str, output: str) -> None:
    total = 0
    for source in sorted(Path(corpus).rglob("*.jsonl.zst")):
        relative = source.relative_to(corpus)
        total += rewrite(source, Path(output) / relative, keep_all=relative.parts[0] != "train")
    print(f"wrote {output}: {total / 1e6:.2f} MB compressed")


if __name__ == "__main__":
    main(*sys.argv[1:3])
