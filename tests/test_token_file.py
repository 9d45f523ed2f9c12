"""The corpus on disk: text streams through in pieces that tokenize as the whole does, the token
files round-trip the corpus, memory-mapped windows equal in-memory ones, and a corpus larger than
the memory a run may use still trains."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt import Tokenizer
from minigpt.tokenizer import END_OF_TEXT
from minigpt.training import Document, TokenCorpus, TokenWindows, prepare, shakespeare, split_by_play
from minigpt.training.token_file import learning_text, stable_pieces, text_file_documents

ROOT = Path(__file__).resolve().parents[1]
GPT2 = Tokenizer.gpt2()
# letters, digits, punctuation, and every kind of space the GPT-2 pattern treats apart
TEXTS = st.lists(st.sampled_from(list("ab Z9.'\n\r\t") + ["  ", "\n\n", "é", "中", "🙂", "'s", " '"]),
                 max_size=80).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=TEXTS, size=st.integers(1, 12))
def test_pieces_tokenize_as_the_whole_text(text, size):
    pieces = list(stable_pieces([text[: len(text) // 2], text[len(text) // 2 :]], size))
    assert "".join(pieces) == text
    assert sum((GPT2.encode(piece) for piece in pieces), []) == GPT2.encode(text)


def test_a_text_with_no_safe_cut_stays_one_piece():
    assert list(stable_pieces(["x" * 50, "y" * 50], size=10)) == ["x" * 50 + "y" * 50]


def read(corpus: TokenCorpus, split: str) -> str:
    return corpus.tokenizer.decode(np.asarray(getattr(corpus, split)).tolist())


def test_the_token_files_round_trip_the_corpus(tmp_path):
    documents = ["First document.\nIt has two lines.", "Second: ünïcödé, 数字 123, and  spaces.\r\n",
                 "Third, to hold out.", "Fourth, held out too."]
    splits = ["train", "train", "held_out", "held_out"]
    info = prepare([Document(split, [text]) for split, text in zip(splits, documents)], GPT2, tmp_path)
    corpus = TokenCorpus.open(tmp_path)
    assert read(corpus, "train") == END_OF_TEXT.join(documents[:2])  # <|endoftext|> between documents
    assert read(corpus, "held_out") == END_OF_TEXT.join(documents[2:])
    assert corpus.train.dtype == np.uint16 and isinstance(corpus.train, np.memmap)
    assert info["tokens"] == {"train": len(corpus.train), "held_out": len(corpus.held_out)}
    assert info["bytes"]["held_out"] == len(END_OF_TEXT.join(documents[2:]).encode())
    assert json.loads((tmp_path / "corpus.json").read_text()) == info


def test_a_large_file_streams_through_and_its_end_is_held_out(tmp_path):
    text = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(6000))  # 320 kB
    (tmp_path / "text.txt").write_text(text)
    prepare(text_file_documents([tmp_path / "text.txt"]), GPT2, tmp_path / "corpus", total_bytes=len(text),
            held_out=0.1)
    corpus = TokenCorpus.open(tmp_path / "corpus")
    train, held = read(corpus, "train"), read(corpus, "held_out")
    assert train + held == text
    assert 0.09 < len(held) / len(text) < 0.11
    assert np.array_equal(np.concatenate([corpus.train, corpus.held_out]), GPT2.encode(text))  # cut where it is safe


def test_a_jsonl_file_is_one_document_a_line(tmp_path):
    lines = [{"text": "one"}, {"text": "two\nlines"}, {"text": "three"}]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    prepare(text_file_documents([tmp_path / "corpus.jsonl"]), GPT2, tmp_path / "corpus")
    corpus = TokenCorpus.open(tmp_path / "corpus")
    assert read(corpus, "train") == END_OF_TEXT.join(line["text"] for line in lines)
    assert corpus.info["documents"] == {"train": 3, "held_out": 0}


def test_a_jsonl_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "\xff"}\n')
    with pytest.raises(ValueError, match="bad.jsonl is not UTF-8 text"):
        list(text_file_documents([tmp_path / "bad.jsonl"]))


def test_the_tokenizer_learns_from_the_first_characters_without_reading_on():
    def documents():
        yield Document("train", ["a" * 300])
        yield Document("train", ["b" * 300])
        raise AssertionError("read past the limit")

    assert learning_text(documents(), 400) == "a" * 300 + END_OF_TEXT + "b" * 100


def test_shakespeare_through_the_token_files_equals_the_text_tokenized_whole(tmp_path):
    """The path the shipped model's corpus now takes gives the tokens it was trained on."""
    tokenizer = Tokenizer.from_files(ROOT / "weights/shakespeare/vocab.json", ROOT / "weights/shakespeare/merges.txt")
    training, held = split_by_play(shakespeare(), ["julius-caesar", "the-tempest", "twelfth-night"])
    documents = [Document("train", [t]) for t in training.values()] + [Document("held_out", [t]) for t in held.values()]
    prepare(documents, tokenizer, tmp_path)
    corpus = TokenCorpus.open(tmp_path)
    assert np.array_equal(corpus.train, tokenizer.encode(END_OF_TEXT.join(training.values()), allow_special=True))
    assert np.array_equal(corpus.held_out, tokenizer.encode(END_OF_TEXT.join(held.values()), allow_special=True))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100), block=st.integers(1, 9), batch=st.integers(1, 5))
def test_memory_mapped_windows_equal_in_memory_ones(tmp_path_factory, seed, block, batch):
    tokens = torch.randint(0, 50257, (200,), generator=torch.Generator().manual_seed(seed))
    path = tmp_path_factory.mktemp("mapped") / "tokens.bin"
    tokens.numpy().astype(np.uint16).tofile(path)
    mapped = TokenWindows(np.memmap(path, dtype=np.uint16, mode="r"), block, seed)
    in_memory = TokenWindows(tokens, block, seed)
    for _ in range(3):
        for (a, b), (c, d) in zip(mapped.step(batch, 2, rank=1, ranks=2), in_memory.step(batch, 2, rank=1, ranks=2)):
            assert a.dtype == torch.int64 and torch.equal(a, c) and torch.equal(b, d)
    for (a, b), (c, d) in zip(mapped.in_order(batch), in_memory.in_order(batch), strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_a_damaged_corpus_is_named(tmp_path):
    prepare([Document("train", ["some text"]), Document("held_out", ["more"])], GPT2, tmp_path)
    with (tmp_path / "train.bin").open("r+b") as file:
        file.truncate(3)
    with pytest.raises(ValueError, match="train.bin does not hold the 2 tokens corpus.json counts"):
        TokenCorpus.open(tmp_path)
    (tmp_path / "corpus.json").write_text("{")
    with pytest.raises(ValueError, match="its corpus.json cannot be read"):
        TokenCorpus.open(tmp_path)


MAX_RSS = 1 << 30  # bytes: a run of this tiny model stays far below it; the corpus is four times larger


def test_a_corpus_larger_than_the_memory_bound_trains(tmp_path):
    """A 4 GiB training file (sparse: real tokens at its start, zeros after) trains in under 1 GiB
    of resident memory: windows are read from the memory map, the file is never loaded."""
    corpus = tmp_path / "corpus"
    text = "We few, we happy few, we band of brothers. " * 200
    prepare([Document("train", [text]), Document("held_out", [text])], GPT2, corpus)
    info = json.loads((corpus / "corpus.json").read_text())
    with (corpus / "train.bin").open("r+b") as file:
        file.truncate(4 << 30)  # 2**31 tokens: zeros after the text, no disk used
    info["tokens"]["train"] = (4 << 30) // 2
    (corpus / "corpus.json").write_text(json.dumps(info))
    # VmHWM, the peak resident memory of this program's own address space; not getrusage's ru_maxrss,
    # which a child inherits from the parent it was forked from (here, a pytest worker that may hold GBs)
    measure = ("import re, runpy, sys; sys.argv = sys.argv[1:]; sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0])\n"
               "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n"
               "    peak = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
               "    print('max rss', int(peak) * 1024, file=sys.stderr)\n    raise")
    done = subprocess.run([sys.executable, "-c", measure, str(ROOT / "scripts" / "train.py"), "--data", str(corpus),
                           "--out", str(tmp_path / "model"), "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                           "--block", "32", "--steps", "30", "--eval-every", "30", "--batch", "8"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "2,147,483,648 training" in done.stdout
    rss = int(done.stderr.rsplit("max rss", 1)[1])
    print(f"peak resident memory {rss / 2**20:.0f} MiB, corpus {(corpus / 'train.bin').stat().st_size / 2**30:.0f} GiB")
    assert rss < MAX_RSS < (corpus / "train.bin").stat().st_size
