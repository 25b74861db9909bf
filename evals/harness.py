"""lm-evaluation-harness adapter: `lm_eval --model metastate --model_args checkpoint=PATH ...`.

The model name is registered when lm-eval's registry loads (evals/lm_eval_hook.py, installed by
`make setup`), so the stock `lm_eval` command runs every task with any checkpoint the stack
writes (sharded DCP/ZeRO or consolidated safetensors). Scoring reuses the held-out evaluator's
windowing: the recurrent families carry their state through contexts of any length, the
transformer slides a window of `max_length` tokens.

Example:
    lm_eval --model metastate --model_args checkpoint=runs/demo,max_length=512 \\
        --tasks lambada_openai --batch_size 8
"""

import codecs
import logging

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from data_pipeline.tokenizer import EOS_ID, load_tokenizer
from evals.checkpoint import load_for_eval
from evals.heldout import padded_batch, window_losses, with_eos_prefix
from model.generate import iter_generate

log = logging.getLogger("metastate.harness")


@register_model("metastate")
class MetastateLM(LM):
    """An lm-eval `LM` over a metastate checkpoint.

    model_args: checkpoint (required), max_length (tokens per forward window; default the
    training seq_len), device, batch_size, seed (for sampled generations).
    """

    def __init__(self, checkpoint: str | None = None, max_length: int | None = None,
                 device: str | None = None, batch_size: int | str | None = 1, seed: int = 1234,
                 max_batch_size: int | None = None, **unused):
        super().__init__()
        if not checkpoint:
            raise ValueError("lm_eval --model metastate needs --model_args checkpoint=PATH "
                             "(a run directory, a step directory or a safetensors file)")
        if unused:
            raise ValueError(f"metastate model_args: unknown {sorted(unused)}; valid: checkpoint, "
                             "max_length, device, batch_size, seed")
        if not device or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            # lm_eval passes device="cuda" unless told otherwise; like its HF model, use the CPU
            device = "cuda" if torch.cuda.is_available() else "cpu"
            log.info("metastate: evaluating on %s", device)
        loaded = load_for_eval(checkpoint, device)
        self.model, self._device = loaded.model, next(loaded.model.parameters()).device
        self.tokenizer = load_tokenizer(loaded.config.get("data", {}).get("tokenizer", "tiktoken"))
        self.max_length = int(max_length or loaded.config.get("data", {}).get("seq_len", 512))
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 1  # "auto" -> 1
        self.seed = int(seed)

    # ------------------------------------------------------------------ scoring

    def _score(self, targets: list[list[int]], first_scored: list[int]) -> list[tuple[float, bool]]:
        """Log-likelihood of targets[i][first_scored[i]:] given everything before it (an EOS in
        front of each sequence), and whether that span is the greedy continuation."""
        order = sorted(range(len(targets)), key=lambda i: len(targets[i]))
        by_index: dict[int, tuple[float, bool]] = {}
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch, valid = padded_batch([targets[i] for i in rows])
            batch = batch.to(self._device)
            with torch.no_grad():
                losses, greedy = window_losses(self.model, with_eos_prefix(batch), batch, self.max_length)
            for row, index in enumerate(rows):
                span = slice(first_scored[index], len(targets[index]))
                by_index[index] = (-float(losses[row, span].double().sum()), bool(greedy[row, span].all()))
        return [by_index[i] for i in range(len(targets))]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], int]:
        # Trailing spaces of the context belong to the continuation's first token in BPE.
        stripped = context.rstrip(" ")
        continuation = context[len(stripped):] + continuation
        context_ids = self.tokenizer.encode(stripped)
        return context_ids + self.tokenizer.encode(continuation), len(context_ids)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*request.args) for request in requests]
        for (ids, n_context), request in zip(pairs, requests):
            if len(ids) == n_context:
                raise ValueError(f"lm-eval request has an empty continuation: {request.args!r}")
        results = []
        step = self.batch_size * 16
        for start in tqdm(range(0, len(pairs), step), disable=disable_tqdm, desc="loglikelihood"):
            chunk = pairs[start:start + step]
            results += self._score([ids for ids, _ in chunk], [n for _, n in chunk])
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            ids = self.tokenizer.encode(request.args[0])
            value = self._score([ids], [0])[0][0] if ids else 0.0
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, value)
            results.append(value)
        return results

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = []
        for request in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, gen_kwargs = request.args
            text = self._generate(context, dict(gen_kwargs))
            self.cache_hook.add_partial("generate_until", request.args, text)
            results.append(text)
        return results

    def _generate(self, context: str, gen_kwargs: dict) -> str:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.pop("max_gen_toks", 256))
        temperature = float(gen_kwargs.pop("temperature", 0.0))
        if not gen_kwargs.pop("do_sample", temperature > 0):
            temperature = 0.0
        top_p = float(gen_kwargs.pop("top_p", 1.0) or 1.0)
        prompt = [EOS_ID] + self.tokenizer.encode(context)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""
        for token in iter_generate(self.model, prompt, max_new, temperature, top_p, self.seed):
            token_id = int(token[0])
            if token_id == EOS_ID:
                break
            text += decoder.decode(self.tokenizer.token_bytes(token_id))
            hits = [text.index(stop) for stop in until if stop in text]
            if hits:
                return text[:min(hits)]
        return text + decoder.decode(b"", final=True)
