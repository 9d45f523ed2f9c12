"""A corpus on disk: tokenized once, into flat files of token ids that training reads by memory map.

    corpus/
      train.bin, held_out.bin   the token ids, one after another (uint16 while the vocabulary fits)
      corpus.json               what they hold: counts, dtype, the split, where the text came from
      vocab.json, merges.txt    the tokenizer that made them

This is nanoGPT's `prepare.py` layout with its metadata written down. Tokenizing is the slow part
of reading a corpus, so it happens once; training then draws windows from `np.memmap` views of the
files, and only the pages a window touches are read: the corpus may be far larger than memory.

Text streams through in pieces, never whole. A BPE tokenizer's answer for a piece of text can
depend on what follows it (a run of spaces, say), so a piece is cut only where it cannot: just
before a single space between two non-space characters, or after a newline between two of them.
There the tokens of the two pieces, one after the other, are the tokens of the whole (tested).
Documents are separated by `<|endoftext|>`, as GPT-2's training text was.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..files import write_text_atomically
from ..tokenizer import END_OF_TEXT, Tokenizer

FORMAT = "minigpt token file 1"
SPLITS = ("train", "held_out")
CUT = re.compile(r"(?<=\S)(?= \S)|(?<=\S\n)(?=\S)")  # where a piece of text may end (see above)
PIECE = 1 << 16  # characters per piece, about: small enough to tokenize with little memory


def stable_pieces(chunks: Iterable[str], size: int = PIECE) -> Iterator[str]:
    """The text of `chunks`, joined, re-cut into pieces of about `size` characters at safe places.
    A text with no safe place (one 'word' of a gigabyte) stays one piece."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) > size and (cut := CUT.search(buffer, size)) is not None:
            yield buffer[: cut.start()]
            buffer = buffer[cut.start():]
    if buffer:
        yield buffer


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class Document:
    """One document of the corpus: where it goes (a split, or None: cut by the held-out mark) and its text."""

    split: str | None
    chunks: Iterable[str]  # its text, in chunks of any size, read once


def split_pieces(documents: Iterable[Document], mark: float) -> Iterator[tuple[str, str, int]]:
    """(split, piece, document number) for every piece of the documents, in order. A document whose
    split is None goes to 'train' until `mark` bytes of the corpus have passed, then to 'held_out',
    from the first safe cut after the mark."""
    done, past_mark = 0, False
    for number, document in enumerate(documents):
        for piece in stable_pieces(document.chunks):
            size = len(piece.encode("utf-8"))
            if document.split is None and not past_mark and done + size > mark:
                before, piece = _cut_near(piece, mark - done)
                if before:
                    yield "train", before, number
                past_mark = True
            done += size
            if piece:
                yield document.split or ("held_out" if past_mark else "train"), piece, number


def prepare(documents: Iterable[Document], tokenizer: Tokenizer, out: Path, *, total_bytes: int = 0,
            held_out: float = 0.0, sources: list[str] | None = None, tokenizer_made: str = "given",
            progress: Callable[[int], None] = lambda done: None) -> dict:
    """Tokenize `documents` into the token files in `out`; returns what corpus.json says.
    held_out: the share of `total_bytes` at the end that documents without a split give to
    'held_out'. progress(bytes done) is called after every piece."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype, eot = dtype_for(tokenizer.vocab_size), tokenizer.eot_id
    if eot is None:
        raise ValueError("the tokenizer has no <|endoftext|> token to separate documents")
    counts, documents_in, last = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, -1)
    sizes = dict.fromkeys(SPLITS, 0)  # bytes of text, <|endoftext|> counted as the 13 characters it stands for
    partial = {split: out / f".{split}.bin.partial" for split in SPLITS}
    files = {split: open(path, "wb") for split, path in partial.items()}
    done = 0
    try:
        for split, piece, number in split_pieces(documents, _mark(total_bytes, held_out)):
            ids, size = tokenizer.encode(piece), len(piece.encode("utf-8"))
            if number != last[split]:  # a new document in this split
                if counts[split]:
                    ids, sizes[split] = [eot, *ids], sizes[split] + len(END_OF_TEXT)
                last[split], documents_in[split] = number, documents_in[split] + 1
            files[split].write(np.asarray(ids, dtype=dtype).tobytes())
            counts[split] += len(ids)
            sizes[split] += size
            done += size
            progress(done)
    except BaseException:  # a failed or interrupted run leaves nothing half-written behind
        for split in SPLITS:
            files[split].close()
            partial[split].unlink(missing_ok=True)
        raise
    for file in files.values():
        file.close()
    info = {"format": FORMAT, "dtype": dtype.name, "vocab_size": tokenizer.vocab_size, "eot_id": eot,
            "tokenizer": {"files": ["vocab.json", "merges.txt"], "made": tokenizer_made},
            "tokens": counts, "documents": documents_in, "bytes": sizes, "held_out": held_out, "sources": sources or []}
    for split in SPLITS:  # renamed only now: a failed run leaves no token file that looks whole
        partial[split].replace(out / f"{split}.bin")
    tokenizer.save(out)
    write_text_atomically(out / "corpus.json", json.dumps(info, indent=1) + "\n")
    return info


def learning_text(documents: Iterable[Document], limit: int, *, total_bytes: int = 0, held_out: float = 0.0) -> str:
    """What a new tokenizer learns from: the training text (never the held-out), its first `limit`
    characters, documents joined by <|endoftext|>."""
    texts: dict[int, list[str]] = {}
    size = 0
    for split, piece, number in split_pieces(documents, _mark(total_bytes, held_out)):
        if split == "train":
            texts.setdefault(number, []).append(piece[: limit - size])
            size += len(texts[number][-1])
            if size >= limit:
                break  # the rest of the corpus is not read
    return END_OF_TEXT.join("".join(pieces) for pieces in texts.values())


def _mark(total_bytes: int, held_out: float) -> float:
    return total_bytes * (1 - held_out) if held_out > 0 else float("inf")


def _cut_near(piece: str, byte: float) -> tuple[str, str]:
    """piece -> (before, after), cut at the first safe place at or after its `byte`-th byte."""
    chars = len(piece.encode("utf-8")[: max(0, int(byte))].decode("utf-8", errors="ignore"))
    cut = CUT.search(piece, chars)
    return (piece[: cut.start()], piece[cut.start():]) if cut else (piece, "")


@dataclass
class TokenCorpus:
    """A prepared corpus, opened: each split's tokens as a read-only memory map."""

    directory: Path
    info: dict
    tokenizer: Tokenizer
    train: np.ndarray  # (n) token ids, memory-mapped
    held_out: np.ndarray

    @classmethod
    def open(cls, directory: str | Path) -> TokenCorpus:
        """Checked before it is used: corpus.json, the files' sizes against its counts, the tokenizer."""
        directory = Path(directory)
        where = f"{directory} is not a prepared corpus (scripts/prepare.py writes one)"
        if not (directory / "corpus.json").exists():
            raise ValueError(f"{where}: it has no corpus.json")
        if not (directory / "corpus.json").is_file():  # a pipe or a device would be waited on, not read
            raise ValueError(f"{where}: its corpus.json is not a regular file")
        try:
            info = json.loads((directory / "corpus.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{where}: its corpus.json cannot be read ({err})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError(f"{where}: its corpus.json is not of the format {FORMAT!r}")
        tokenizer = Tokenizer.from_files(directory / "vocab.json", directory / "merges.txt")
        dtype = dtype_for(tokenizer.vocab_size)
        if info.get("dtype") != dtype.name or info.get("vocab_size") != tokenizer.vocab_size:
            raise ValueError(f"{where}: corpus.json says {info.get('vocab_size')} tokens as {info.get('dtype')}, "
                             f"its tokenizer has {tokenizer.vocab_size}")
        sizes, eot = info.get("bytes"), info.get("eot_id")
        if not isinstance(sizes, dict) or not all(_count(sizes.get(split)) for split in SPLITS):
            raise ValueError(f"{where}: its corpus.json has no count of bytes for each split ('bytes': {sizes!r:.60})")
        if not _count(eot) or eot >= tokenizer.vocab_size:
            raise ValueError(f"{where}: its corpus.json's eot_id ({eot!r:.20}) is not a token of its vocabulary of "
                             f"{tokenizer.vocab_size}")
        streams = {}
        for split in SPLITS:
            path, tokens = directory / f"{split}.bin", info.get("tokens")
            count = tokens.get(split) if isinstance(tokens, dict) else None
            if not path.is_file() or not isinstance(count, int) or path.stat().st_size != count * dtype.itemsize:
                raise ValueError(f"{where}: {path.name} does not hold the {count} tokens corpus.json counts")
            largest = _largest_id(path, dtype)
            if largest >= tokenizer.vocab_size:
                raise ValueError(f"{where}: {path.name} holds token id {largest}, past its vocabulary of "
                                 f"{tokenizer.vocab_size}")
            # an empty file cannot be mapped; an empty split is refused by whoever needs its windows
            streams[split] = np.memmap(path, dtype=dtype, mode="r") if count else np.zeros(0, dtype)
        return cls(directory, info, tokenizer, streams["train"], streams["held_out"])


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _largest_id(path: Path, dtype: np.dtype) -> int:
    """The largest id in a token file (0 for an empty one), read in chunks of 16 MiB: read through
    the memory map instead, every page would stay resident."""
    largest = 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 24):
            largest = max(largest, int(np.frombuffer(chunk, dtype=dtype).max()))
    return largest


TEXT_SUFFIXES = (".txt", ".md", ".jsonl")


def text_files(paths: list[Path]) -> list[Path]:
    """The files named, and under each directory named every .txt, .md and .jsonl file, sorted."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
            if not found:
                raise ValueError(f"{path} holds no {', '.join(TEXT_SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or directory")
    return files


def text_file_documents(paths: list[Path]) -> Iterator[Document]:
    """Documents from files, streamed: a .jsonl file gives one per line (its "text"), any other file
    is one document, read as UTF-8."""
    for path in paths:
        if path.suffix == ".jsonl":
            yield from (Document(None, [text]) for text in _jsonl_texts(path))
        else:
            yield Document(None, _read_chunks(path))


def _read_chunks(path: Path, size: int = 1 << 20) -> Iterator[str]:
    with open(path, encoding="utf-8", newline="") as file:  # newline="": the text as it is, \r\n kept
        try:
            while chunk := file.read(size):
                yield chunk
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err.reason} near byte {file.buffer.tell()})") from None


def _jsonl_texts(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as file:
        try:
            for number, line in enumerate(file, 1):
                if line.strip():
                    yield _jsonl_text(path, number, line)
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err.reason} near byte {file.buffer.tell()})") from None


def _jsonl_text(path: Path, number: int, line: str) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        raise ValueError(f"{path}, line {number}: not JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f'{path}, line {number}: a .jsonl corpus needs {{"text": "..."}} on every line')
    return record["text"]


def prepare_corpus(documents: Callable[[], Iterable[Document]], out: Path, tokenizer: Tokenizer | None, *,
                   tokenizer_made: str = "given", vocab_size: int = 2048, learn_chars: int = 1 << 24,
                   total_bytes: int = 0, held_out: float = 0.0, sources: list[str] | None = None,
                   progress: Callable[[int], None] = lambda done: None) -> dict:
    """`prepare`, with a tokenizer learned first when none is given: a byte-level BPE of `vocab_size`
    tokens learned from the first `learn_chars` characters of the training text. `documents` is
    called once for each pass over the text; `tokenizer_made` says where a given tokenizer came from."""
    if tokenizer is None:
        text = learning_text(documents(), learn_chars, total_bytes=total_bytes, held_out=held_out)
        tokenizer = Tokenizer.train(text, vocab_size)
        tokenizer_made = f"learned: a byte-level BPE from the first {len(text):,} characters of the training text"
    return prepare(documents(), tokenizer, out, total_bytes=total_bytes, held_out=held_out, sources=sources,
                   tokenizer_made=tokenizer_made, progress=progress)
