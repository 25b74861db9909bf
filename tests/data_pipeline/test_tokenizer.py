import hashlib
from importlib import resources

import numpy as np
import pytest

from data_pipeline.jsonl_reader import iter_documents
from data_pipeline.stats import StreamStats
from data_pipeline.tokenizer import (
    EOS_ID,
    PADDED_VOCAB_SIZE,
    VOCAB_SIZE,
    TokenizerError,
    load_tokenizer,
    tokenizer_path,
)

SHARED_SHA256 = "2055a42d05a355486b727185030e3e88aa7b708a265bb4cf90b69cf6faa910a1"

TRICKY = [
    "Hello world", "a  b", "a   b", "x" + " " * 25 + "y", "x" + " " * 24 + "y", "x" + " " * 48,
    " " * 49 + "z", "a\n  b", "  leading", "trailing  ", "tab\t\t  \n   \nend",
    "<|endoftext|> inside <|padding|> text", "caf\u00e9 vs cafe\u0301 (NFC)", "日本語のテキスト 🤖🚀",
    "def f(x):\n        return x  # two  spaces\n", "It's we'll they're I'd",
    "numbers 1234567 3.14159 -0.5e-10", "\u00a0non-breaking\u2009thin space", "\r\n\r\nCRLF",
    "zero\u200bwidth", "emoji 👩‍👩‍👧 family", "Ελληνικά και русский", "",
    "x \n  y", "a \t  b", "\n\nb", " " * 25 + "\n", "  <|endoftext|>  x", "a\u00a0 \u00a0  b",
    "a \u3000  b", "end with one space ", "  \t  \n  ", "'s  's   'll",
]


@pytest.fixture(scope="module")
def fast():
    return load_tokenizer("tiktoken")


@pytest.fixture(scope="module")
def reference():
    return load_tokenizer("hf")


def test_packaged_tokenizer_is_the_shared_file_found_via_importlib_resources():
    via_resources = resources.files("data_pipeline").joinpath("assets",
                                                              "gpt-neox-20b-tokenizer.json")
    assert via_resources.is_file()
    assert hashlib.sha256(via_resources.read_bytes()).hexdigest() == SHARED_SHA256
    assert tokenizer_path().is_file()
    assert load_tokenizer().sha256 == SHARED_SHA256


@pytest.mark.parametrize("text", TRICKY)
def test_fast_encoder_matches_hf_on_edge_cases(fast, reference, text):
    assert fast.encode(text) == reference.encode(text)


def test_fast_encoder_matches_hf_on_real_documents(fast, reference, real_paragraphs):
    texts = [text for text, _ in real_paragraphs]
    assert sum(len(t) for t in texts) > 400_000
    assert fast.encode_batch(texts) == reference.encode_batch(texts)


def test_document_encoding_appends_eos_and_fits_uint16(fast):
    ids = fast.encode_document("Hello world")
    assert ids.dtype == np.uint16
    assert ids.tolist() == [12092, 1533, EOS_ID]
    assert fast.decode(ids[:-1]) == "Hello world"


def test_decode_inverts_encode(fast, real_paragraphs):
    for text, _ in real_paragraphs[:50]:
        assert fast.decode(fast.encode(text)) == text


def test_vocab_is_padded_for_the_model():
    assert VOCAB_SIZE == 50277
    assert PADDED_VOCAB_SIZE >= VOCAB_SIZE and PADDED_VOCAB_SIZE % 64 == 0


def test_whole_embedded_validation_split_matches_hf(fast, reference):
    texts = [d.text for d in iter_documents(
        str(tokenizer_path().parents[2] / "data" / "embedded" / "val.jsonl.zst"), StreamStats())]
    assert [fast.encode(t) for t in texts] == reference.encode_batch(texts)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(TokenizerError, match="tiktoken | hf"):
        load_tokenizer("sentencepiece")
