"""The suite for a learner's tokenizer: an object with encode(text) -> list of ids and
decode(ids) -> text, held to GPT-2's byte-level BPE (minigpt's Tokenizer.gpt2(), itself held to
OpenAI's tiktoken by the tests)."""

from __future__ import annotations

from hypothesis import strategies as st

from ..tokenizer import Tokenizer
from .properties import holds
from .report import Finding

# text a learner's tokenizer meets: spaces and newlines, contractions, digits, accents, emoji
# and scripts outside Latin; lone surrogates cannot be written as UTF-8 and are left out
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
SAMPLES = ["Hello world", "  two spaces", "it's", "I'll", "x = 3.14159", "naïve café", "日本語", "🙂 ok", "\n\nKING LEAR:\n"]


def tokenizer_suite(tokenizer) -> tuple[list[Finding], str | None]:
    gpt2 = Tokenizer.gpt2()

    def round_trip(text: str) -> str | None:
        back = tokenizer.decode(tokenizer.encode(text))
        return None if back == text else f"decode(encode({text!r})) gave {back!r}"

    def same_ids(text: str) -> str | None:
        mine, theirs = list(tokenizer.encode(text)), gpt2.encode(text)
        return None if mine == theirs else f"encode({text!r}) gave {mine[:8]}, GPT-2's ids are {theirs[:8]}"

    samples = st.sampled_from(SAMPLES) | TEXT
    return [holds("decode(encode(text)) gives back any text", "tokenizer-bytes", samples, round_trip, examples=60),
            holds("gives GPT-2's ids", "tokenizer-merges", samples, same_ids, examples=60)], None
