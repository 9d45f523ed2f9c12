"""Speculative decoding (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
Decoding"; Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative
Sampling"): a small draft model guesses the next k tokens, the model checks all k in one pass,
and every guess it agrees with is a token gained for one pass of the model.

    prefill: the prompt but its last token through both models (each cache holds every committed
             token but the last, `last`)
    each round, until every row has its tokens or has stopped:
        propose  the draft, one token at a time from `last`: d_1 .. d_k, drawn from its own
                 distributions q_1 .. q_k (one more pass writes d_k into its cache)
        verify   the model over [last, d_1 .. d_k] in one pass: its distributions p_1 .. p_(k+1)
        accept   d_j while the model agrees: greedy, while d_j is the argmax of p_j; sampling, with
                 probability min(1, p_j(d_j) / q_j(d_j)). At the first refusal, the model's own
                 token (greedy: argmax p_j; sampling: drawn from max(0, p_j - q_j), normalised);
                 if all k are accepted, a bonus token from p_(k+1)
        roll back both caches keep, row by row, the slots of `last` and the accepted guesses

Greedy speculative decoding writes greedy's tokens: each kept token is the model's argmax given
the tokens before it (up to float rounding: a verification pass sums in another order than a
one-token step, so two logits within ~1e-6 of each other can tie the other way). Speculative
sampling draws every token from exactly the model's (processed) distribution: a guess is kept
with probability min(p, q) and the correction adds max(0, p - q) (Leviathan et al., appendix A.1).

Rows of a batch accept different numbers of guesses: the slots a row did not use stay in its
caches as holes (`KVCache.keep`), which attention skips and positions do not count, so each row
gets the logits it gets alone; `KVCache.compact` squeezes them out when a cache fills. The shared
options (EOS, min_new_tokens, n-gram blocking, repetition penalty) process each distribution,
the draft's and the model's, with the row's own tokens so far.

Axes: b rows, t prompt positions, k guesses, v vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from minigpt.checks import check_float, check_int
from minigpt.kv_cache import KVCache

from . import processors
from .generation import DecoderModel, Generation, check_model, real_prompt_tokens
from .options import DecodingOptions, check_temperature, decoding_options
from .records import Recorder

MAX_DRAFT_TOKENS = 32  # guesses per round; past a few the draft is rarely still right, and each costs a draft step


@dataclass
class Row:
    """One row's decoding: its tokens so far (the prompt's real tokens, then the new ones) and its records."""

    tokens: list[int]
    recorder: Recorder
    chosen: list[int] = field(default_factory=list)  # the new tokens, as written (the pad token after an all-banned stop)
    stopped: bool = False
    proposed: int = 0  # the draft's guesses for this row
    accepted: int = 0  # and how many the model kept


@torch.no_grad()
def speculative(model: DecoderModel, draft: DecoderModel, input_ids: Tensor, *, max_new_tokens: int | None = None,
                draft_tokens: int = 4, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None, attention_mask: Tensor | None = None,
                options: DecodingOptions | None = None, **shared) -> Generation:
    """Extend each prompt row (b t) by up to max_new_tokens tokens, the draft guessing
    draft_tokens (k) of them a round. temperature=0: greedy, the tokens of `greedy` (and of
    transformers' `generate(assistant_model=draft)`); temperature > 0 (with top_k and top_p as in
    `sample`): speculative sampling, each token drawn from the model's processed distribution.
    The draft must share the model's vocabulary (its tokenizer) and device. Padding, the shared
    options and stopping as in `greedy`; `Generation.proposed` and `.accepted` count the guesses."""
    check_model(model)
    if not isinstance(draft, DecoderModel):
        raise ValueError(f"draft must be a minigpt GPT (a smaller model with the same tokenizer), got "
                         f"{type(draft).__name__}")
    options = decoding_options("speculative", max_new_tokens, options, shared,
                               own=["draft_tokens", "temperature", "top_k", "top_p", "generator"])
    check_int("draft_tokens", draft_tokens, 1, MAX_DRAFT_TOKENS)
    check_temperature(temperature)
    check_int("top_k", top_k, low=0)
    check_float("top_p", top_p, 0.0, 1.0, open_low=True)
    if draft.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"the draft's vocabulary has {draft.config.vocab_size} tokens, the model's "
                         f"{model.config.vocab_size}: a draft must use the model's tokenizer")
    if draft.device != model.device:
        raise ValueError(f"the draft is on {draft.device}, the model on {model.device}; move the draft to {model.device}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    then = processors.sampling(temperature=temperature or 1.0, top_k=top_k, top_p=top_p, min_p=0.0, typical_p=1.0)
    real = real_prompt_tokens(model, input_ids, attention_mask, max_new_tokens)  # (b t)
    real_prompt_tokens(draft, input_ids, attention_mask, max_new_tokens)  # the draft's context must hold them too
    rounds = Rounds(model, draft, input_ids, real, max_new_tokens, draft_tokens, options, then, temperature > 0, generator)
    while rounds.step():
        pass
    return rounds.generation()


class Rounds:
    """Between rounds: both caches, each row's newest token (`last`, in neither cache yet) and records."""

    def __init__(self, model: DecoderModel, draft: DecoderModel, input_ids: Tensor, real: Tensor, max_new_tokens: int,
                 k: int, options: DecodingOptions, then: list, sampling: bool, generator: torch.Generator | None):
        self.model, self.draft, self.k, self.sampling, self.generator = model, draft, k, sampling, generator
        self.input_ids, self.prompt_real, self.max_new = input_ids, real, max_new_tokens
        self.rules = options.rules(model.config.vocab_size, then)
        # the processors that read a row's history (or its count of new tokens) run row by row; the rest at once
        self.by_row = options.repetition_penalty != 1.0 or options.no_repeat_ngram_size > 0 or options.min_new_tokens > 0
        b, t = input_ids.shape
        self.rows = [Row(input_ids[i][real[i]].tolist(), Recorder(options.alternatives, options.keep_logprobs,
                                                                  model.config.vocab_size)) for i in range(b)]
        # slots: the prompt, every new token, one round's k + 1, and room for holes until `compact` is due
        length = t + max_new_tokens + 2 * (k + 1)
        self.caches = [KVCache(m.config.n_layer, b, m.config.kv_heads, m.config.head_dim, length, device=m.device,
                               dtype=m.dtype) for m in (model, draft)]
        if t > 1:  # prefill: all but the last prompt token
            for m, cache in zip((model, draft), self.caches):
                m.transform(input_ids[:, :-1], real[:, :-1], cache)
        self.last = input_ids[:, -1].clone()  # (b)

    def step(self) -> bool:
        """One round: propose, verify, accept, roll back. False when every row is done."""
        need = [0 if row.stopped else self.max_new - len(row.chosen) for row in self.rows]
        if max(need) <= 0:
            return False
        guesses = [min(max(n - 1, 0), self.k) for n in need]  # a row that needs one more token guesses none
        k = max(guesses)
        # column j of the k + 1 tokens fed is real for a row that makes at least j guesses (column 0: `last`)
        fed_real = torch.tensor([[n > 0 and j <= g for j in range(k + 1)] for n, g in zip(need, guesses)],
                                device=self.last.device)  # (b k+1)
        if self.caches[0].length + k + 1 > self.caches[0].max_length:
            for cache in self.caches:
                cache.compact()
        start = self.caches[0].length  # both caches hold the same slots
        proposals, draft_probs = self.propose(k, fed_real)  # (b k), k of (b v)
        fed = torch.cat([self.last[:, None], proposals], dim=1)  # (b k+1)
        logits = self.model.head(self.model.transform(fed, fed_real, self.caches[0])).float()  # (b k+1 v)
        kept = [self.accept(i, logits[i], proposals[i].tolist(), draft_probs, guesses[i]) if need[i] > 0 else 0
                for i in range(len(self.rows))]
        for cache in self.caches:
            cache.keep(start, torch.tensor(kept, device=self.last.device))
        return True

    def propose(self, k: int, fed_real: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The draft's k guesses per row (b k), one at a time, and (sampling) the distributions
        they were drawn from; greedy guesses are argmaxes. Its cache ends holding all k."""
        token, guesses, drawn_from = self.last, [], []
        for j in range(k + 1):
            logits = self.draft.head(self.draft.transform(token[:, None], fed_real[:, j : j + 1], self.caches[1]))
            if j == k:  # the extra pass writes d_k into the draft's cache; its logits are not needed
                break
            processed = self.processed(logits[:, -1].float(), guesses)  # (b v)
            if self.sampling:
                # a row with every token banned has no distribution; it is done, and any guess will do
                drawn_from.append(processed.softmax(dim=-1).nan_to_num(1.0))
                token = torch.multinomial(drawn_from[-1], 1, generator=self.generator)[:, 0]
            else:
                token = processed.argmax(dim=-1)
            guesses.append(token)
        empty = torch.zeros(len(self.rows), 0, dtype=torch.long, device=self.last.device)
        return (torch.stack(guesses, dim=1) if guesses else empty), drawn_from

    def processed(self, logits: Tensor, guesses: list[Tensor]) -> Tensor:
        """Every row's logits (b v) through the options, each after its tokens so far and this
        round's guesses (each (b)) so far."""
        if not self.by_row:  # no processor reads the history: any will do (and the guesses stay on the device)
            return self.rules.processors(logits, self.last[:, None], torch.ones_like(self.last[:, None], dtype=torch.bool), 0)
        so_far = torch.stack(guesses, dim=1).tolist() if guesses else [[] for _ in self.rows]
        return torch.cat([self.processed_row(i, logits[i : i + 1], extra) for i, extra in enumerate(so_far)])

    def processed_row(self, i: int, logits: Tensor, extra: list[int] = ()) -> Tensor:
        """Row i's logits (1 v) through the options, after its tokens so far and then `extra`."""
        history = torch.tensor([self.rows[i].tokens + list(extra)], device=logits.device) if self.by_row \
            else self.last[i : i + 1, None]  # (1 s)
        return self.rules.processors(logits, history, torch.ones_like(history, dtype=torch.bool),
                                     len(self.rows[i].chosen) + len(extra))

    def accept(self, i: int, logits: Tensor, guesses: list[int], draft_probs: list[Tensor], count: int) -> int:
        """Row i's first `count` guesses against the model's logits (k+1 v); writes the tokens it
        keeps. Returns how many of the round's slots its caches keep: `last` and the accepted guesses."""
        row = self.rows[i]
        row.proposed += count
        for j in range(count + 1):
            guess = guesses[j] if j < count else None  # past the guesses: the bonus token
            processed = self.processed_row(i, logits[j : j + 1])  # (1 v)
            if not bool((processed > float("-inf")).any()):  # every token banned: the row stops, as in greedy
                self.write(i, logits[j : j + 1], processed, self.rules.pad_token_id, alive=False)
                return j + 1
            token = self.choose(processed[0], guess, draft_probs[j][i] if self.sampling and guess is not None else None)
            self.write(i, logits[j : j + 1], processed, token, alive=True)
            row.accepted += token == guess
            if token != guess or row.stopped:
                return j + 1  # `token` is the next `last`; the slots of `last` and the j accepted guesses stay
        raise AssertionError("unreachable: the bonus token (guess None) always ends the loop")

    def choose(self, processed: Tensor, guess: int | None, draft_probs: Tensor | None) -> int:
        """The model's token at one position, from its processed logits (v): the guess if accepted, else its own."""
        if not self.sampling:
            return int(processed.argmax())
        probs = processed.softmax(dim=-1)
        if guess is None:  # the bonus token
            return int(torch.multinomial(probs, 1, generator=self.generator))
        # kept with probability min(1, p / q); q(guess) > 0, the draft drew it
        if float(torch.rand((), generator=self.generator, device=probs.device)) * draft_probs[guess] < probs[guess]:
            return guess
        residual = (probs - draft_probs).clamp(min=0)  # where the model wants more than the draft gave
        return int(torch.multinomial(residual, 1, generator=self.generator))

    def write(self, i: int, logits: Tensor, processed: Tensor, token: int, alive: bool) -> None:
        row, device = self.rows[i], logits.device
        row.recorder.step(logits, processed, torch.tensor([token], device=device), torch.tensor([alive], device=device))
        row.chosen.append(token)
        row.tokens.append(token)
        row.stopped = not alive or token in self.rules.eos_ids
        self.last[i] = token

    def generation(self) -> Generation:
        """Each row's records stacked into one Generation, a shorter row padded as greedy pads a stopped one."""
        t, pad = self.input_ids.shape[1], self.rules.pad_token_id
        width = max(len(row.chosen) for row in self.rows)
        parts = []
        for i, row in enumerate(self.rows):
            new = torch.tensor(row.chosen + [pad] * (width - len(row.chosen)), dtype=torch.long, device=self.last.device)
            parts.append(row.recorder.generation(torch.cat([self.input_ids[i], new])[None], self.prompt_real[i : i + 1]))
        fills = {"scores": 0.0, "token_logprobs": 0.0, "entropy": 0.0, "alternatives": -1, "alternative_probs": 0.0}
        if parts[0].step_logprobs is not None:
            fills["step_logprobs"] = 0.0
        return Generation(
            sequences=torch.cat([pad_to(p.sequences, t + width, pad) for p in parts]), prompt_length=t,
            attention_mask=torch.cat([pad_to(p.attention_mask, t + width, 0) for p in parts]),
            **{name: torch.cat([pad_to(getattr(p, name), width, fill) for p in parts]) for name, fill in fills.items()},
            proposed=torch.tensor([row.proposed for row in self.rows]),
            accepted=torch.tensor([row.accepted for row in self.rows]))


def pad_to(values: Tensor, width: int, fill: float) -> Tensor:
    """(1 n ...) -> (1 width ...), the new columns `fill`."""
    missing = width - values.shape[1]
    return values if missing <= 0 else torch.cat([values, values.new_full((1, missing, *values.shape[2:]), fill)], dim=1)
