import math

import pytest
import torch
import torch.nn.functional as F

from evals.heldout import evaluate_documents, window_losses, with_eos_prefix
from model import build_model, model_preset
from ops import OpsConfig


def tiny(name):
    torch.manual_seed(0)
    return build_model(model_preset(name), OpsConfig(backend="chunked")).eval()


def full_pass_losses(model, targets):
    inputs = with_eos_prefix(targets)
    with torch.no_grad():
        logits, _ = model(inputs)
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


@pytest.mark.parametrize("name", ["metastate-tiny", "rwkv7-tiny"])
def test_recurrent_windows_carry_the_state_so_long_documents_see_everything(name):
    model = tiny(name)
    targets = torch.randint(1, 256, (2, 40))
    with torch.no_grad():
        windowed, greedy = window_losses(model, with_eos_prefix(targets), targets, context=8)
    torch.testing.assert_close(windowed, full_pass_losses(model, targets), atol=2e-4, rtol=1e-4)
    assert greedy.dtype == torch.bool and greedy.shape == targets.shape


def test_transformer_slides_its_window_and_scores_each_token_once_with_limited_context():
    model = tiny("transformer-tiny")
    targets = torch.randint(1, 256, (1, 30))
    inputs = with_eos_prefix(targets)
    with torch.no_grad():
        windowed, _ = window_losses(model, inputs, targets, context=8, stride=4)
        full = full_pass_losses(model, targets)
        # windows [0,8) [4,12) [8,16) [12,20) [16,24): target 21 is scored in the last, at offset 5
        logits, _ = model(inputs[:, 16:24])
    torch.testing.assert_close(windowed[:, :8], full[:, :8], atol=1e-5, rtol=1e-5)
    expected = F.cross_entropy(logits[0, 5:6], targets[0, 21:22])
    torch.testing.assert_close(windowed[0, 21], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(windowed[:, 8:], full[:, 8:])  # truncated context changes the loss


def docs():
    torch.manual_seed(1)
    lengths = [5, 17, 3, 30, 11]
    return [{"tokens": torch.cat([torch.randint(1, 256, (n - 1,)), torch.zeros(1, dtype=torch.long)]),
             "pile_set_name": "A" if i % 2 else "B", "n_bytes": 4 * n + i, "doc_index": i}
            for i, n in enumerate(lengths)]


@pytest.mark.parametrize("name", ["metastate-tiny", "transformer-tiny"])
def test_totals_are_exact_per_document_and_independent_of_batching(name):
    model = tiny(name)
    one = evaluate_documents(model, docs(), context=8, batch_size=1)
    many = evaluate_documents(model, docs(), context=8, batch_size=3)
    assert one.overall.tokens == sum(len(d["tokens"]) for d in docs()) == 66
    assert one.overall.bytes == sum(d["n_bytes"] for d in docs())
    assert math.isclose(one.overall.loss_sum, many.overall.loss_sum, rel_tol=1e-5)
    # each document's loss is the plain full-context loss of its tokens (recurrent: exact)
    if name != "transformer-tiny":
        expected = sum(float(full_pass_losses(model, d["tokens"][None]).sum()) for d in docs())
        assert math.isclose(one.overall.loss_sum, expected, rel_tol=1e-4)
    summary = one.as_dict(context=8)
    subsets = summary["subsets"]
    assert set(subsets) == {"A", "B"}
    assert sum(s["tokens"] for s in subsets.values()) == 66
    assert subsets["A"]["documents"] == 2 and subsets["B"]["documents"] == 3
    overall = summary["overall"]
    assert math.isclose(overall["bits_per_byte"], one.overall.loss_sum / math.log(2) / one.overall.bytes)
    assert math.isclose(overall["perplexity"], math.exp(overall["loss"]))
    positions = summary["positions"]
    assert sum(b["tokens"] for b in positions) == 66
    assert [b["beyond_context"] for b in positions] == [b["start"] >= 8 for b in positions]
    assert any(b["start"] == 8 for b in positions)  # a bucket edge at the context length


def test_bad_window_settings_are_one_line_errors():
    model = tiny("rwkv7-tiny")
    with pytest.raises(ValueError, match="context=0"):
        evaluate_documents(model, docs(), context=0)
    with pytest.raises(ValueError, match="stride=9"):
        evaluate_documents(model, docs(), context=8, stride=9)
    with pytest.raises(ValueError, match="no documents"):
        evaluate_documents(model, [], context=8)


@pytest.mark.parametrize("name", ["rwkv7-tiny", "transformer-tiny"])
def test_head_in_slices_scores_like_whole_window_logits(name):
    """loss_chunk_size=6 over a batch of 2: the head sees 3 positions at a time, including a
    shorter last slice of each 8-token window; losses and greedy hits match whole logits."""
    model = tiny(name)
    targets = torch.randint(1, 256, (2, 29))
    with torch.no_grad():
        model.ops_cfg.loss_chunk_size = 0
        whole, whole_greedy = window_losses(model, with_eos_prefix(targets), targets, context=8)
        model.ops_cfg.loss_chunk_size = 6
        sliced, sliced_greedy = window_losses(model, with_eos_prefix(targets), targets, context=8)
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=1e-6)
    assert torch.equal(sliced_greedy, whole_greedy)
