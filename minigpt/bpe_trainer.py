"""Learning byte-level BPE merges from a text (Sennrich, Haddow & Birch 2016, as GPT-2 does it).

Start from the 256 bytes (each spelled by its stand-in character, as in `tokenizer.py`); split the
text into words with GPT-2's pattern, so no merge crosses a word boundary; then again and again
join the adjacent pair that occurs most often, counting each word as often as it appears, until
the vocabulary has the size asked for. The merges, in the order learned, are the tokenizer: encoding
replays them by rank.

Counting every pair again after each merge would cost a pass over the corpus per merge. Instead
the pair counts are kept up to date: a merge changes only the words that hold its pair, so only
their pairs are recounted, and a heap finds the most frequent pair (an entry whose count has
changed since it was pushed is skipped). Ties go to the pair that sorts first, so training is
deterministic.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict

import regex

from .checks import check_int


def learn_merges(text: str, vocab_size: int, pattern: str, byte_symbols: dict[int, str],
                 special: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (symbol -> id: 256 bytes, the merged symbols in order, then `special`) and
    the merges, for a vocabulary of `vocab_size` entries."""
    if not isinstance(text, str) or not text:
        raise ValueError("train needs a non-empty text")
    check_int("vocab_size", vocab_size, 257, None)  # the 256 bytes and the special token, at least
    counts = Counter(regex.findall(pattern, text))
    words = [[byte_symbols[b] for b in word.encode("utf-8")] for word in counts]  # each word as its bytes
    frequency = list(counts.values())

    pairs: Counter[tuple[str, str]] = Counter()  # pair -> occurrences in the text
    holders: defaultdict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> the words that hold it
    for index, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += frequency[index]
            holders[pair].add(index)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)

    merges: list[tuple[str, str]] = []
    while 256 + len(merges) + 1 < vocab_size and heap:
        count, pair = heapq.heappop(heap)
        if -count != pairs.get(pair, 0) or count == 0:
            continue  # stale: the pair's count changed since this entry was pushed
        merges.append(pair)
        changed = set()
        for index in holders.pop(pair):
            changed |= _count_pairs(words[index], -frequency[index], pairs, holders, index)  # forget its old pairs
            words[index] = _merge(words[index], pair)
            changed |= _count_pairs(words[index], frequency[index], pairs, holders, index)  # count its new ones
        pairs.pop(pair, None)
        for touched in changed - {pair}:  # every count that moved, up or down, gets a fresh heap entry
            heapq.heappush(heap, (-pairs[touched], touched))
    if 256 + len(merges) + 1 < vocab_size:
        raise ValueError(f"the text has only enough distinct pairs for a vocabulary of {256 + len(merges) + 1}, "
                         f"not vocab_size={vocab_size}")
    # The 256 byte tokens in GPT-2's order, that of their stand-in characters (printable bytes
    # first): the order OpenAI's vocab.bpe readers (tiktoken's among them) assume.
    symbols = sorted(byte_symbols.values()) + [first + second for first, second in merges] + [special]
    return {symbol: i for i, symbol in enumerate(symbols)}, merges


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Join every occurrence of `pair`, left to right."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def _count_pairs(symbols: list[str], weight: int, pairs: Counter, holders: defaultdict, index: int) -> set:
    """Add `weight` to the count of each adjacent pair of one word; returns the pairs touched."""
    touched = set()
    for pair in zip(symbols, symbols[1:]):
        pairs[pair] += weight
        if weight > 0:
            holders[pair].add(index)
        touched.add(pair)
    return touched
