"""The lm-eval adapter: exact scores in process, and the stock `lm_eval` command end to end."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from data_pipeline.tokenizer import EOS_ID
from evals import lm_eval_hook
from evals.harness import MetastateLM
from model.generate import generate

pytestmark = pytest.mark.slow
TASKS = Path(__file__).parent / "lm_eval_tasks"


def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def logprobs(model, ids):
    with torch.no_grad():
        logits, _ = model(torch.tensor([[EOS_ID] + ids[:-1]]))
    return torch.log_softmax(logits.float(), -1)[0, torch.arange(len(ids)), torch.tensor(ids)]


@pytest.fixture(scope="module")
def lm(trained_run):
    return MetastateLM(checkpoint=str(trained_run), max_length=8, batch_size=2, device="cpu")


def test_loglikelihoods_are_the_models_own_scores(lm):
    tok = lm.tokenizer
    pairs = [("The cat sat on the", " mat."), ("Zürich liegt am ", "Zürichsee und so weiter")]
    results = lm.loglikelihood([request("loglikelihood", *p) for p in pairs], disable_tqdm=True)
    for (context, continuation), (value, greedy) in zip(pairs, results):
        stripped = context.rstrip(" ")   # a trailing space moves to the continuation
        ids = tok.encode(stripped) + tok.encode(context[len(stripped):] + continuation)
        n = len(tok.encode(stripped))
        expected = logprobs(lm.model, ids)[n:].double().sum().item()
        assert math.isclose(value, expected, rel_tol=1e-4), (context, value, expected)
        assert isinstance(greedy, bool)
    text = "for i in range(10):\n    print(i)\n" * 3   # longer than max_length=8: state carried
    (rolling,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)], disable_tqdm=True)
    assert math.isclose(rolling, logprobs(lm.model, tok.encode(text)).double().sum().item(), rel_tol=1e-4)
    with pytest.raises(ValueError, match="empty continuation"):
        lm.loglikelihood([request("loglikelihood", "abc", "")])


def test_generate_until_is_greedy_and_stops_at_the_stop_string(lm):
    tok = lm.tokenizer
    prompt = "The cat"
    greedy = generate(lm.model, [EOS_ID] + tok.encode(prompt), max_new_tokens=6, temperature=0)[0]
    full = tok.decode([t for t in greedy.tolist()])
    (text,) = lm.generate_until([request("generate_until", prompt, {"until": [], "max_gen_toks": 6})],
                                disable_tqdm=True)
    assert text == full.split(tok.decode([EOS_ID]))[0]
    stop = text[2:4] if len(text) >= 4 else None
    if stop:
        (cut,) = lm.generate_until([request("generate_until", prompt, {"until": [stop], "max_gen_toks": 6})],
                                   disable_tqdm=True)
        assert cut == text[:text.index(stop)]


def test_stock_lm_eval_cli_runs_local_tasks_with_a_metastate_checkpoint(lm, trained_run, tmp_path):
    assert lm_eval_hook.is_installed(), (
        f"{lm_eval_hook.pth_path()} is missing: run `make setup` (or python -m evals.lm_eval_hook)")
    # the console script of this interpreter's environment: `make test` runs the venv's python
    # without activating the venv, so `lm_eval` need not be on PATH
    lm_eval_bin = str(Path(sys.executable).with_name("lm_eval"))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    proc = subprocess.run(
        [lm_eval_bin, "--model", "metastate", "--model_args", f"checkpoint={trained_run},max_length=8",
         "--tasks", "metastate_local_mc,metastate_local_ppl,metastate_local_gen", "--include_path", ".",
         "--device", "cpu", "--batch_size", "2", "--output_path", str(tmp_path / "out")],
        cwd=TASKS, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    assert 0.0 <= results["metastate_local_mc"]["acc,none"] <= 1.0
    assert 0.0 <= results["metastate_local_gen"]["exact_match,none"] <= 1.0
    # lm-eval's bits per byte over the documents equals the adapter's own rolling scores
    docs = [json.loads(line)["text"] for line in (TASKS / "text.jsonl").read_text().splitlines()]
    scores = lm.loglikelihood_rolling([request("loglikelihood_rolling", d) for d in docs], disable_tqdm=True)
    expected = -sum(scores) / sum(len(d.encode("utf-8")) for d in docs) / math.log(2)
    assert math.isclose(results["metastate_local_ppl"]["bits_per_byte,none"], expected, rel_tol=1e-4)
