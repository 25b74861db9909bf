"""The GPT-NeoX-20B tokenizer (the Pile's): a fast exact `tiktoken` encoder, HF `tokenizers` fallback.

The tiktoken encoder reproduces HF `tokenizers` bit for bit on this vocabulary because
  * NeoX's BPE merge ranks are monotonic in token id, so "rank = id" is tiktoken's merge order;
  * NFC normalization runs first, as the JSON's normalizer says;
  * HF first cuts runs of >= 2 spaces out of the text as the 23 added tokens of 2..24 spaces
    (ids 50254..50276; leftmost-longest, so a run of n spaces is n // 24 tokens of 24 plus one for
    the rest, and a single left-over space starts the next segment), then applies GPT-2's
    byte-level regex to each segment. `_NEOX_PATTERN` does both in one pass: its first
    alternative takes up to 24 spaces of a run, and its whitespace alternatives never enter a
    run (a space may only be matched when no space follows), which is exactly where HF's segment
    ends. Pure-space BPE tokens (e.g. id 245, two spaces) can then never occur in HF's output, so
    their byte strings are given to the added ids, whose ranks make a run's piece merge into the
    single added token.
`benchmarks/data_bench.py` compares both backends on every document of the shared corpus.
"""

import functools
import hashlib
import json
import unicodedata
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

TOKENIZER_NAME = "gpt-neox-20b"
TOKENIZER_FILE = "gpt-neox-20b-tokenizer.json"
EOS_ID = 0                     # <|endoftext|>, appended after every document
PAD_ID = 1                     # <|padding|>
VOCAB_SIZE = 50277
PADDED_VOCAB_SIZE = 50304      # multiple of 64 for the embedding / LM head matmuls
BACKENDS = ("tiktoken", "hf")
TOKEN_DTYPE = np.uint16        # every id < 65536

# GPT-2's byte-level regex ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|
# \s+(?!\S)|\s+) with HF's space-run extraction folded in (see the module docstring); the
# whitespace class `(?:[^\S ]| (?! ))` is "any whitespace, but a space only if no space follows".
_NEOX_PATTERN = (r""" {2,24}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                 r"""|(?:[^\S ]| (?! ))+(?!\S)|(?:[^\S ]| (?! ))+""")
_SPECIAL_TEXTS = frozenset({"<|endoftext|>", "<|padding|>"})


class TokenizerError(ValueError):
    """The tokenizer file is missing or is not the GPT-NeoX-20B tokenizer."""


def tokenizer_path() -> Path:
    """Path of the packaged tokenizer JSON (works from a checkout and from an installed wheel).

    Example: `tokenizers.Tokenizer.from_file(str(tokenizer_path()))`.
    """
    resource = resources.files("data_pipeline").joinpath("assets", TOKENIZER_FILE)
    path = Path(str(resource))
    if not path.is_file():
        raise TokenizerError(f"packaged tokenizer {path} is missing; reinstall metastate "
                             f"(pip install -e .) so data_pipeline/assets/ is included")
    return path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable-unicode map used in the JSON vocab."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


class NeoXTokenizer:
    """GPT-NeoX-20B tokenizer; `encode_document` appends EOS (id 0).

    Example:
        >>> tok = load_tokenizer()
        >>> tok.encode("Hello world")
        [12092, 1533]
        >>> tok.encode_document("Hi").tolist()[-1] == EOS_ID
        True
    """

    name = TOKENIZER_NAME
    eos_id = EOS_ID
    pad_id = PAD_ID
    vocab_size = VOCAB_SIZE
    padded_vocab_size = PADDED_VOCAB_SIZE

    def __init__(self, backend: str = "tiktoken", path: str | Path | None = None):
        if backend not in BACKENDS:
            raise TokenizerError(f"tokenizer backend must be one of {' | '.join(BACKENDS)}, "
                                 f"got {backend!r}")
        self.backend = backend
        self.path = Path(path) if path is not None else tokenizer_path()
        if not self.path.is_file():
            raise TokenizerError(f"tokenizer file {self.path} not found")
        self.sha256 = file_sha256(self.path)
        spec = json.loads(self.path.read_text(encoding="utf-8"))
        vocab: dict[str, int] = spec["model"]["vocab"]
        added = {entry["content"]: entry["id"] for entry in spec["added_tokens"]}
        if len(vocab) + len(added) - len(_SPECIAL_TEXTS) != VOCAB_SIZE:
            raise TokenizerError(f"{self.path} has {len(vocab)} BPE + {len(added)} added tokens; "
                                 f"expected the GPT-NeoX-20B tokenizer ({VOCAB_SIZE} tokens)")
        decode_byte = _byte_decoder()
        self._bytes_of = [b""] * VOCAB_SIZE
        for token, index in vocab.items():
            self._bytes_of[index] = bytes(decode_byte[ch] for ch in token)
        for token, index in added.items():
            self._bytes_of[index] = token.encode("utf-8")
        space_runs = {t.encode(): i for t, i in added.items() if t.strip(" ") == ""}
        self._hf = None
        self._tiktoken = None
        if backend == "hf":
            import tokenizers
            self._hf = tokenizers.Tokenizer.from_file(str(self.path))
        else:
            import tiktoken
            ranks = {self._bytes_of[i]: i for t, i in vocab.items() if t not in _SPECIAL_TEXTS}
            ranks = {b: i for b, i in ranks.items() if len(b) < 2 or b.strip(b" ")}
            ranks.update(space_runs)
            self._tiktoken = tiktoken.Encoding(
                f"{TOKENIZER_NAME}-exact", pat_str=_NEOX_PATTERN, mergeable_ranks=ranks,
                special_tokens={t: added[t] for t in _SPECIAL_TEXTS})

    def __reduce__(self):
        return (load_tokenizer, (self.backend, str(self.path)))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no EOS; a literal `<|endoftext|>` becomes id 0, as in HF."""
        if self._hf is not None:
            return self._hf.encode(text, add_special_tokens=False).ids
        return self._encode_tiktoken(unicodedata.normalize("NFC", text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._hf is not None:
            return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]
        return [self._encode_tiktoken(unicodedata.normalize("NFC", t)) for t in texts]

    def encode_document(self, text: str) -> np.ndarray:
        """The ids of one document followed by EOS, as the uint16 array the data files hold."""
        ids = self.encode(text)
        ids.append(EOS_ID)
        return np.array(ids, dtype=TOKEN_DTYPE)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (invalid UTF-8 from a partial multi-byte token becomes U+FFFD)."""
        return b"".join(self._bytes_of[int(i)] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (part of a character for some ids; b"" for the padding
        ids above the vocabulary), for streaming decoders."""
        token_id = int(token_id)
        return self._bytes_of[token_id] if 0 <= token_id < VOCAB_SIZE else b""

    def _encode_tiktoken(self, text: str) -> list[int]:
        return self._tiktoken.encode(text, allowed_special=_SPECIAL_TEXTS, disallowed_special=())


@functools.lru_cache(maxsize=4)
def load_tokenizer(backend: str = "tiktoken", path: str | None = None) -> NeoXTokenizer:
    """The GPT-NeoX-20B tokenizer (cached per backend and path).

    Example: `load_tokenizer().encode_document("Some text")` -> uint16 ids ending in EOS (0).
    """
    return NeoXTokenizer(backend, path)
