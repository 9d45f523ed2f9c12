"""The options every decoder shares, in one frozen object checked once where it is made (as
`GPTConfig` is), and the welcome for transformers habits.

Every decoder takes them as keywords (`greedy(model, ids, max_new_tokens=20, eos_token_id=50256)`)
or as one object (`greedy(model, ids, max_new_tokens=20, options=DecodingOptions(eos_token_id=50256))`);
either way `DecodingOptions` checks them, and `rules(model)` checks what depends on the model's
vocabulary and turns them into the processors each step's logits go through, in transformers' order.

A keyword that transformers' generate() takes but that means something else here, or lives in
another decoder, is one ValueError saying what to write instead (`HABITS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from minigpt.checks import check_float, check_int, check_token_id

from . import processors
from .processors import Processor

ALTERNATIVES = 5  # how many of the most likely tokens each step remembers
# A temperature or repetition penalty multiplies or divides the logits. Logits of a real model are
# at most ~1e4 in size, so scaled within this range they stay far inside float32 (3.4e38): the
# softmax never meets inf - inf. 1e-45, say, turns every logit into inf and every score into NaN.
SCALE_RANGE = (1e-6, 1e6)


@dataclass(frozen=True)
class DecodingOptions:
    eos_token_id: int | Sequence[int] | None = None  # a row stops at this token, or at any of a list
    pad_token_id: int | None = None  # what a row holds after it stopped (default: the first EOS id)
    min_new_tokens: int = 0  # EOS is forbidden before this many new tokens
    no_repeat_ngram_size: int = 0  # no n-gram of this size may occur twice in a row (0: off)
    repetition_penalty: float = 1.0  # tokens already in the row are made less likely (1: off)
    alternatives: int = ALTERNATIVES  # each step remembers this many of its likeliest tokens
    keep_logprobs: bool = False  # and, if True, its whole log-probability row

    def __post_init__(self) -> None:
        eos = self.eos_token_id
        if isinstance(eos, (list, tuple)):
            if not eos:
                raise ValueError("eos_token_id is an empty list; give None for no EOS")
            for i, e in enumerate(eos):
                check_int(f"eos_token_id[{i}]", e, 0)
            object.__setattr__(self, "eos_token_id", tuple(eos))  # frozen, hashable
        elif eos is not None:
            check_int("eos_token_id", eos, 0)
        if self.pad_token_id is not None:
            check_int("pad_token_id", self.pad_token_id, 0)
        check_int("min_new_tokens", self.min_new_tokens, low=0)
        check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, low=0)
        check_float("repetition_penalty", self.repetition_penalty, *SCALE_RANGE)
        check_int("alternatives", self.alternatives, 0)
        if not isinstance(self.keep_logprobs, bool):
            raise ValueError(f"keep_logprobs must be True or False, got {self.keep_logprobs!r:.40}")

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The EOS ids as a tuple (transformers also takes a list, and a row stops at any of them)."""
        eos = self.eos_token_id
        return () if eos is None else tuple(eos) if isinstance(eos, tuple) else (eos,)

    def rules(self, vocab_size: int, then: Sequence[Processor] = ()) -> Rules:
        """The options checked against the vocabulary and put to use; `then`: processors of the
        decoder's own (sampling's), run after the shared ones."""
        eos = self.eos_ids
        for i, e in enumerate(eos):
            name = "eos_token_id" if isinstance(self.eos_token_id, int) else f"eos_token_id[{i}]"
            check_token_id(name, e, vocab_size)
        if self.pad_token_id is not None:
            check_token_id("pad_token_id", self.pad_token_id, vocab_size)
        check_int("alternatives", self.alternatives, 0, vocab_size)
        steps = processors.shared(repetition_penalty=self.repetition_penalty,
                                  no_repeat_ngram_size=self.no_repeat_ngram_size, min_new_tokens=self.min_new_tokens,
                                  eos_ids=eos)
        pad = self.pad_token_id if self.pad_token_id is not None else eos[0] if eos else 0
        return Rules(eos_ids=eos, pad_token_id=pad, processors=processors.chain([*steps, *then]))


def check_temperature(temperature: object) -> float:
    """0 (greedy: the limit of an ever sharper distribution) or a scale within SCALE_RANGE."""
    check_float("temperature", temperature, 0.0, SCALE_RANGE[1])
    if 0 < temperature < SCALE_RANGE[0]:
        raise ValueError(f"temperature must be 0 (greedy) or in [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}], got {temperature:g}")
    return temperature


def check_sampling(temperature: object, top_k: object, top_p: object, min_p: object, typical_p: object) -> None:
    """The options only sampling reads, each in its range: `sample` checks them, and so does a
    script that takes them for every decoder, so that a value sampling would refuse is never
    silently ignored by another decoder."""
    check_temperature(temperature)
    check_int("top_k", top_k, low=0)
    check_float("top_p", top_p, 0.0, 1.0, open_low=True)
    check_float("min_p", min_p, 0.0, 1.0)
    check_float("typical_p", typical_p, 0.0, 1.0, open_low=True)


@dataclass(frozen=True)
class Rules:
    """The options checked against a model's vocabulary and put to use."""

    eos_ids: tuple[int, ...]  # a row stops at any of these
    pad_token_id: int  # what a row holds after it stopped
    processors: Processor  # what each step's logits go through before a token is chosen


SHARED = tuple(field.name for field in dataclasses.fields(DecodingOptions))

# transformers' generate() keyword -> what to write in minigpt ({decoder} is the decoder called)
HABITS = {
    "max_length": "max_new_tokens (minigpt counts only the new tokens; max_length counted the prompt too)",
    "do_sample": "decoders.sample(...) to sample, decoders.greedy(...) or decoders.beam_search(...) not to: "
                 "each decoder is its own function",
    "num_beams": "decoders.beam_search(model, ids, num_beams=..., ...): {decoder} keeps one sequence per row",
    "num_beam_groups": "decoders.diverse_beam_search(model, ids, num_beams=..., num_beam_groups=..., "
                       "diversity_penalty=...)",
    "diversity_penalty": "decoders.diverse_beam_search(model, ids, num_beams=..., num_beam_groups=..., "
                         "diversity_penalty=...)",
    "penalty_alpha": "decoders.contrastive_search(model, ids, penalty_alpha=..., top_k=...)",
    "temperature": "decoders.sample(model, ids, temperature=...): a temperature only changes what is drawn, so "
                   "{decoder} has none (its argmax is the same at any temperature)",
    "top_k": "decoders.sample(model, ids, top_k=...) to sample from the top k, or "
             "decoders.contrastive_search(model, ids, top_k=..., penalty_alpha=...)",
    "top_p": "decoders.sample(model, ids, top_p=...): nucleus filtering only changes what is drawn",
    "min_p": "decoders.sample(model, ids, min_p=...): min-p filtering only changes what is drawn",
    "typical_p": "decoders.sample(model, ids, typical_p=...): typical filtering only changes what is drawn",
    "length_penalty": "decoders.beam_search(model, ids, num_beams=..., length_penalty=...): it ranks finished beams",
    "early_stopping": "decoders.beam_search(model, ids, num_beams=..., early_stopping=...)",
    "num_return_sequences": "decoders.sample(..., num_return_sequences=...) or decoders.beam_search(..., "
                            "num_return_sequences=...): {decoder} has one answer per row",
    "output_scores": "nothing: every Generation holds scores (the processed log-prob of each chosen token), "
                     "token_logprobs, entropy and alternatives; keep_logprobs=True keeps whole rows",
    "output_logits": "keep_logprobs=True: Generation.step_logprobs holds each step's whole log-probability row",
    "return_dict_in_generate": "nothing: every decoder returns a Generation (sequences, scores, ...)",
    "output_attentions": "model.trace(ids) or model.run_with_cache(ids) to read attention patterns",
    "output_hidden_states": "model.trace(ids) or model.run_with_cache(ids) to read hidden states",
    "streamer": "on_token=fn: fn sees each step's tokens (b)",
    "generation_config": "the options as keywords, or options=decoders.DecodingOptions(...)",
    "use_cache": "nothing: every decoder is KV-cached",
    "max_time": "max_new_tokens: decoding is bounded by length",
    "forced_eos_token_id": "eos_token_id (a row stops there); nothing is forced",
    "bad_words_ids": "a processor of your own: decoders.processors.forbid_tokens",
    "begin_suppress_tokens": "a processor of your own: decoders.processors.forbid_tokens",
    "labels": "decoders.sequence_logprob(model, sequences, prompt_length) or minigpt.analysis.lm_loss",
}


def decoding_options(decoder: str, max_new_tokens: object, options: DecodingOptions | None, keywords: dict,
                     own: Sequence[str] = ()) -> DecodingOptions:
    """The DecodingOptions a decoder called `decoder` runs with: `options`, or built from the shared
    keywords; `own` names the decoder's own options (for the message when a keyword is unknown).
    max_new_tokens is required; it defaults to None only so that `max_length=` gets its word first."""
    unknown = [name for name in keywords if name not in SHARED]
    if unknown:
        name = unknown[0]
        if name in HABITS:
            raise ValueError(f"{decoder} takes no {name}: in minigpt write {HABITS[name].format(decoder=decoder)}")
        allowed = ", ".join(["max_new_tokens", "attention_mask", *own, *SHARED, "options"])
        raise ValueError(f"{decoder} takes no option {name!r}; its options are {allowed}")
    if max_new_tokens is None:
        raise ValueError(f"max_new_tokens must be an integer, got None: {decoder} needs how many tokens to add")
    if options is None:
        return DecodingOptions(**keywords)
    if not isinstance(options, DecodingOptions):
        raise ValueError(f"options must be a decoders.DecodingOptions, got {type(options).__name__}")
    if keywords:
        raise ValueError(f"give the shared options once: {', '.join(keywords)} as keywords or in options, not both")
    return options
