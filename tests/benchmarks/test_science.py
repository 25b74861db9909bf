"""benchmarks/science.py plumbing on a tiny budget: the JSONL and Markdown table it writes, resume
after an interruption, the byte-level eval windows and its bad-input errors."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.science import SEPARATOR, val_windows

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = "transformer,metastate meta_decay=own"


def science(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks/science.py"), "--out", str(out),
                           "--corpus", str(ROOT / "data/embedded"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_quick_run_writes_rows_and_table_and_a_rerun_resumes(tmp_path):
    first = science(tmp_path, "--quick", "--variants", VARIANTS, "--seeds", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "step 6/6 loss" in first.stdout            # progress lines while it runs
    recorded = first_rows = rows(tmp_path)
    assert [(r["label"], r["seed"]) for r in recorded] == [("transformer", 0),
                                                           ("metastate meta_decay=own", 0)]
    for row in recorded:
        assert row["val_bytes"] == 3000 and 0 < row["bits_per_byte"] < 16
        assert row["train_bytes"] == 6 * 2 * 32 and row["non_embedding"] > 0
    # an interrupted run is resumed: two seeds now, seed 0 is not trained again
    second = science(tmp_path, "--quick", "--variants", VARIANTS)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 finished runs reused, 2 to go" in second.stdout
    recorded = rows(tmp_path)
    assert recorded[:2] == first_rows and len(recorded) == 4
    table = (tmp_path / "table.md").read_text().splitlines()
    assert len(table) == 4 and table[0].startswith("| variant |")
    transformer = [r["bits_per_byte"] for r in recorded if r["label"] == "transformer"]
    mean, std = statistics.fmean(transformer), statistics.stdev(transformer)
    assert f"| {mean:.4f} ± {std:.4f} |" in table[2] and table[2].startswith("| transformer |")
    third = science(tmp_path, "--quick", "--variants", VARIANTS)
    assert "4 finished runs reused, 0 to go" in third.stdout and len(rows(tmp_path)) == 4


def test_val_windows_count_every_text_byte_once():
    windows = val_windows([b"ab", b"cde"], 4)              # stream: a b 0 c | d e 0
    assert [w["tokens"].tolist() for w in windows] == [[97, 98, SEPARATOR, 99], [100, 101, SEPARATOR]]
    assert [w["n_bytes"] for w in windows] == [3, 2]


def test_bad_variant_and_missing_corpus_are_one_line_errors_with_exit_2(tmp_path):
    bad = science(tmp_path, "--quick", "--variants", "rwkv8")
    assert bad.returncode == 2 and "--variants: unknown ['rwkv8']" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks/science.py"), "--corpus",
                              str(tmp_path), "--quick"], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "has no train/ and val.jsonl.zst" in missing.stderr
