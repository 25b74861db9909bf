"""LanguageModel.step (the one-token decode form) computes what the parallel pass computes, and
its state continues either path; token ids are range-checked where they enter, not per forward."""

import pickle

import pytest
import torch

from model.token_ids import check_token_range

from .conftest import TINY, random_tokens, tiny_model

VARIANTS = [(name, {}) for name in TINY] + [
    ("metastate-tiny", {"sse": "learned"}),
    ("metastate-tiny", {"out_norm": "full", "z_norm": "rms"}),
    ("metastate-tiny", {"meta_shift": False, "meta_decay": "own"}),
]


def _close(a, b, what):
    scale = b.abs().max().clamp_min(1e-6)
    assert (a - b).abs().max() <= 1e-5 * scale, f"{what}: max diff {(a - b).abs().max():.3e}"


@torch.no_grad()
def _step_after_prompt(model, tokens, prompt_length: int, reference=None):
    """The prompt through forward, the remaining tokens one by one through step; each step's
    logits must equal the parallel pass's (of `reference`, default the model itself), and so
    must the final state. Returns the parallel pass's logits."""
    full_logits, full_state = (reference or model)(tokens)
    _, state = model(tokens[:, :prompt_length])
    for t in range(prompt_length, tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state)
        _close(logits, full_logits[:, t], f"logits at t={t}")
    assert state.seen_tokens == full_state.seen_tokens == tokens.shape[1]
    for layer, (ours, theirs) in enumerate(zip(state.layers, full_state.layers)):
        assert ours.keys() == theirs.keys()
        for key in ours:
            _close(ours[key], theirs[key], f"layer {layer} state {key}")
    return full_logits


@pytest.mark.parametrize(("name", "overrides"), VARIANTS,
                         ids=[f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o in VARIANTS])
def test_steps_match_the_parallel_pass_and_carry_its_state(name, overrides):
    model = tiny_model(name, **overrides).eval()
    tokens = random_tokens(model, batch=2, length=9)
    full_logits = _step_after_prompt(model, tokens, prompt_length=5)
    with torch.no_grad():
        # a step from no state is the first token of a parallel pass; forward continues a step's state
        first, state = model.step(tokens[:, 0])
        _close(first, full_logits[:, 0], "first token from no state")
        rest, _ = model(tokens[:, 1:], state)
        _close(rest, full_logits[:, 1:], "forward after a step")


def test_step_refuses_a_state_from_another_model():
    small, deep = tiny_model("rwkv7-tiny"), tiny_model("rwkv7-tiny", n_layer=3)
    _, state = small(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="state has 2 layers but the model has 3"):
        deep.step(torch.tensor([3]), state)


def test_token_range_is_checked_where_ids_enter():
    with pytest.raises(ValueError, match=r"prompt: token id 256 is outside the vocabulary \[0, 256\)"):
        check_token_range(torch.tensor([[1, 256]]), 256, "prompt")
    with pytest.raises(ValueError, match="token id -1"):
        check_token_range(torch.tensor([[-1, 3]]), 256)
    check_token_range(torch.tensor([[0, 255]]), 256)
    check_token_range(torch.empty(0, dtype=torch.int64), 256)


def test_forward_does_not_read_token_values(monkeypatch):
    """The range check synced the GPU on every forward (two host reads); forward now reads no
    token value back: any host read of a tensor's value during forward fails this test."""
    model = tiny_model("metastate-tiny")
    tokens = random_tokens(model, batch=1, length=4)

    def no_host_reads(*args, **kwargs):
        raise AssertionError("forward read a tensor value back to the host")

    for name in ("item", "__int__", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, no_host_reads)
    model(tokens)


@pytest.mark.parametrize("name", ["rwkv7-tiny", "metastate-tiny"])
def test_prepare_for_decode_changes_layout_only(name, tmp_path):
    """Column-major storage for the one-row products: values, state_dict, a saved checkpoint,
    training's loss and gradients and the step's logits stay what they were."""
    model, prepared = tiny_model(name), tiny_model(name)
    tokens = random_tokens(model, batch=2, length=6)
    assert prepared.prepare_for_decode() is prepared
    head = prepared.head.weight
    assert head.stride() == (1, head.shape[0]) and torch.equal(head, model.head.weight)
    wide_in = [m.weight for m in prepared.modules()
               if isinstance(m, torch.nn.Linear) and m.in_features > m.out_features]
    assert all(w.is_contiguous() for w in wide_in)   # out < in reads faster row-major: kept
    before, after = model.state_dict(), prepared.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    torch.save(after, tmp_path / "model.pt")
    reloaded = torch.load(tmp_path / "model.pt")
    assert all(torch.equal(before[k], reloaded[k]) for k in before)

    loss, _ = model(tokens[:, :-1], targets=tokens[:, 1:])
    prepared_loss, _ = prepared(tokens[:, :-1], targets=tokens[:, 1:])
    loss.backward()
    prepared_loss.backward()
    _close(prepared_loss, loss, "training loss")
    for (key, p), q in zip(model.named_parameters(), prepared.parameters()):
        _close(q.grad, p.grad, f"gradient of {key}")

    _step_after_prompt(prepared.eval(), tokens, prompt_length=4, reference=model.eval())


def test_scripted_step_matches_the_parallel_pass():
    """prepare_for_decode(script=True): the TorchScript one-token TimeMix and ChannelMix give
    the parallel pass's logits and state, and the model still pickles (it holds only a flag)."""
    model = tiny_model("rwkv7-tiny").eval().prepare_for_decode(script=True)
    assert all(block.att.scripted_step and block.ffn.scripted_step for block in model.blocks)
    _step_after_prompt(model, random_tokens(model, batch=2, length=7), prompt_length=3)
    copy = pickle.loads(pickle.dumps(model))
    assert copy.blocks[0].att.scripted_step


@pytest.mark.parametrize("script", [False, True])
def test_step_under_bf16_autocast_follows_the_parallel_pass(script):
    """Under autocast the step takes the transition path (the WKV update in fp32) and the
    scripted functions stand aside; logits agree with forward's to bf16 rounding."""
    model = tiny_model("rwkv7-tiny").eval().prepare_for_decode(script=script)
    tokens = random_tokens(model, batch=2, length=5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full_logits, _ = model(tokens)
        _, state = model(tokens[:, :4])
        logits, state = model.step(tokens[:, 4], state)
    assert state.layers[0]["wkv"].dtype == torch.float32
    scale = full_logits[:, 4].float().abs().max()
    assert (logits.float() - full_logits[:, 4].float()).abs().max() <= 3e-2 * scale
