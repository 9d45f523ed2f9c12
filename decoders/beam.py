"""Beam search: keep the num_beams best partial sequences, and a pool of the best finished ones.

Mirrors `GenerationMixin._beam_search` in transformers' `generation/utils.py` (5.x). Each step,
for every prompt, in this order (the loop in `beam_search` reads as these five calls):

1. `score_continuations`: every live beam's next-token log-probabilities (log-softmax, then the
   processors) are added to the beam's running score. At the first step only beam 0 is live.
2. `best_candidates`: of all beams x vocabulary, the best c = 2 x num_beams (with several EOS
   ids, (1 + their number) x num_beams) are kept: enough that num_beams remain even if all the
   EOS candidates among them end.
3. `update_finished`: a candidate that ends (EOS, or max_new_tokens reached) and ranks in the
   first num_beams joins the pool with score sum(log-probs) / generated_length ** length_penalty.
   The pool keeps its best num_beams.
4. `next_beams`: the best num_beams candidates that did not end are the next beams; the KV
   cache's rows follow them.
5. `still_improvable`: a prompt's search is done when its pool is full and (early_stopping=True, or
   no running beam can still beat the worst hypothesis in it); the search stops when all are.

Diverse beam search (`diverse_beam.py`) runs the same steps for each group of beams.

Axes: b prompts (one search each), k beams, c candidates, v vocabulary, s = prompt + max_new_tokens,
a alternatives kept per step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from minigpt.checks import check_fits_in_memory, check_float, check_int

from .generation import (ALTERNATIVES, DecoderModel, LENGTH_PENALTY_RANGE, Generation, check_record_options,
                         decoding_rules, prefill, real_prompt_tokens, summarize)

# transformers' stand-in for log 0: finite, so a sum with it still orders correctly, and a beam
# that holds it is never chosen over one that does not
IMPOSSIBLE = -1.0e9


@dataclass
class Hypotheses:
    """k hypotheses for each of b searches; every field is (b k ...), one entry per hypothesis."""

    tokens: Tensor  # (b k s): the prompt, then the tokens chosen so far (pad beyond)
    score: Tensor  # (b k): the sum of the processed log-probs of its tokens (IMPOSSIBLE: not a hypothesis)
    final_score: Tensor  # (b k): in the pool, score / length ** length_penalty, what it ranks by; else IMPOSSIBLE
    finished: Tensor  # (b k) bool: a finished hypothesis in the pool (False for an empty slot)
    length: Tensor  # (b k): new tokens, EOS included
    step_score: Tensor  # (b k new): processed log-prob of each chosen token
    step_logprob: Tensor  # (b k new): the model's own log-prob of it
    entropy: Tensor  # (b k new): of the distribution it was chosen from
    alternatives: Tensor  # (b k new a): that distribution's likeliest tokens
    alternative_probs: Tensor  # (b k new a)
    step_logprobs: Tensor | None  # (b k new v) with keep_logprobs

    @classmethod
    def empty(cls, prompt: Tensor, k: int, max_new_tokens: int, pad: int, score: float, alternatives: int,
              vocab: int | None) -> Hypotheses:
        """k copies of each prompt row (b t), every one with running score `score`."""
        b, t = prompt.shape
        per_step = torch.zeros(b, k, max_new_tokens, device=prompt.device)
        per_alternative = torch.zeros(b, k, max_new_tokens, alternatives, device=prompt.device)
        tokens = torch.full((b, k, t + max_new_tokens), pad, dtype=torch.long, device=prompt.device)
        tokens[:, :, :t] = prompt[:, None, :]
        return cls(tokens=tokens, score=torch.full((b, k), score, device=prompt.device),
                   final_score=torch.full((b, k), IMPOSSIBLE, device=prompt.device),
                   finished=torch.zeros(b, k, dtype=torch.bool, device=prompt.device),
                   length=torch.zeros(b, k, dtype=torch.long, device=prompt.device),
                   step_score=per_step, step_logprob=per_step.clone(), entropy=per_step.clone(),
                   alternatives=per_alternative.long(), alternative_probs=per_alternative.clone(),
                   step_logprobs=None if vocab is None else torch.zeros(b, k, max_new_tokens, vocab, device=prompt.device))

    def take(self, index: Tensor) -> Hypotheses:
        """The hypotheses `index` (b i) picks in each search, every field alike: (b k ...) -> (b i ...)."""
        def gather(x: Tensor | None) -> Tensor | None:
            return None if x is None else torch.take_along_dim(x, index.view(*index.shape, *[1] * (x.dim() - 2)), dim=1)
        return Hypotheses(**{f.name: gather(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def joined(self, other: Hypotheses) -> Hypotheses:
        """Both sets side by side: (b k ...) and (b i ...) -> (b (k+i) ...)."""
        def cat(mine: Tensor | None, theirs: Tensor | None) -> Tensor | None:
            return None if mine is None else torch.cat([mine, theirs], dim=1)
        return Hypotheses(**{f.name: cat(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)})


# ---- the five steps ------------------------------------------------------------------------

def score_continuations(running: Hypotheses, processed: Tensor) -> Tensor:
    """1. processed log-probs (b k v) + each beam's running score -> the score of every beam x
    token continuation, flattened per search: (b (k v))."""
    return (processed + running.score[:, :, None]).flatten(1)


def best_candidates(totals: Tensor, count: int, vocab: int) -> tuple[Tensor, Tensor, Tensor]:
    """2. The `count` best continuations: their scores, the beam each extends, and its token, (b c).
    Continuation i of the flattened (k v) row is token i % v of beam i // v."""
    scores, place = torch.topk(totals, count)  # place in the flattened (k v) row
    return scores, place // vocab, place % vocab


def extend(running: Hypotheses, parent: Tensor, token: Tensor, scores: Tensor, step: int, prompt_length: int,
           per_beam: dict[str, Tensor], per_candidate: dict[str, Tensor]) -> Hypotheses:
    """The candidates (b c) as hypotheses: their parent beam's history, the new token, and what
    this step records: per_beam values (b k ...) are read through the parent (the entropy of the
    distribution the token came from), per_candidate values (b c) belong to the candidate itself."""
    candidates = running.take(parent)
    candidates.tokens[:, :, prompt_length + step] = token
    candidates.score = scores
    candidates.length = torch.full_like(token, step + 1)
    for name, value in per_beam.items():
        index = parent.view(*parent.shape, *[1] * (value.dim() - 2))
        getattr(candidates, name)[:, :, step] = torch.take_along_dim(value, index, dim=1)
    for name, value in per_candidate.items():
        getattr(candidates, name)[:, :, step] = value
    return candidates


def update_finished(pool: Hypotheses, candidates: Hypotheses, ends: Tensor, k: int, step: int,
                    length_penalty: float, closed: Tensor) -> Hypotheses:
    """3. The pool after the ending candidates among the first k join it (a candidate ranked lower
    would not have been a beam had it gone on), scored sum / length ** length_penalty, and the
    best k kept. closed (b 1): searches whose pool takes no more."""
    joins = ends & (torch.arange(ends.shape[1], device=ends.device) < k) & ~closed
    final = torch.where(joins, candidates.score / ((step + 1) ** length_penalty), IMPOSSIBLE)  # IMPOSSIBLE: stays out
    merged = pool.joined(dataclasses.replace(candidates, finished=joins, final_score=final))
    return merged.take(torch.topk(merged.final_score, k).indices)


def next_beams(candidates: Hypotheses, ends: Tensor, k: int) -> tuple[Hypotheses, Tensor]:
    """4. The best k candidates that did not end, and their index among the candidates (b k).
    An ending candidate's score drops by IMPOSSIBLE so that it ranks below every other; if more
    than c - k of them end (only at max_new_tokens), the search is over anyway."""
    still_running = candidates.score + ends.float() * IMPOSSIBLE
    chosen = torch.topk(still_running, k).indices
    beams = candidates.take(chosen)
    beams.score = still_running.gather(1, chosen)
    return beams, chosen


def still_improvable(pool: Hypotheses, best_score: Tensor, improvable: Tensor, early_stopping: bool | str,
                     length_penalty: float, generated: int, max_new_tokens: int) -> Tensor:
    """5. (b 1): can a running beam still beat the pool's worst? best_score (b 1) is the best
    running score (what transformers' beam search compares). Once a search cannot improve, it
    never can again. With early_stopping=True a full pool is final."""
    full = pool.finished.all(dim=1, keepdim=True)
    if early_stopping is True:
        return improvable & ~full
    best_length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else generated
    best_possible = best_score / (best_length**length_penalty)  # a positive penalty favours length: judge at the longest
    worst = torch.where(full, pool.final_score.min(dim=1, keepdim=True).values, IMPOSSIBLE)
    return improvable & (best_possible > worst)


# ---- beam search ------------------------------------------------------------------------------

@torch.no_grad()  # not inference_mode: its tensors could not feed sequence_logprob with gradients
def beam_search(
    model: DecoderModel,
    input_ids: Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    attention_mask: Tensor | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    min_new_tokens: int = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    alternatives: int = ALTERNATIVES,
    keep_logprobs: bool = False,
) -> Generation:
    """The num_return_sequences best sequences per prompt, best first: rows (b r) of the result.

    Equals `transformers` `generate(num_beams=..., do_sample=False)` with the same options,
    `sequence_scores` its `sequences_scores`. length_penalty > 0 favours longer sequences,
    < 0 shorter ones; 0 ranks by plain log-probability. alternatives and keep_logprobs: as in greedy.
    """
    search = BeamSetup(model, input_ids, attention_mask=attention_mask, num_beams=num_beams,
                       num_return_sequences=num_return_sequences, max_new_tokens=max_new_tokens,
                       length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=eos_token_id,
                       pad_token_id=pad_token_id, min_new_tokens=min_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size,
                       repetition_penalty=repetition_penalty, alternatives=alternatives, keep_logprobs=keep_logprobs)
    b, k, v = search.prompts, num_beams, search.vocab
    running = search.hypotheses(k, live=[0])  # the k beams start as copies of the prompt: only beam 0 is live
    pool = search.hypotheses(k, live=[])
    improvable = torch.ones(b, 1, dtype=torch.bool, device=input_ids.device)
    logits, cache = search.prefill(k)  # cache rows (b k), in the order of running's
    first_row = torch.arange(b, device=input_ids.device)[:, None] * k  # (b 1): each prompt's first cache row
    for step in range(max_new_tokens):
        logprobs, processed = search.process(logits, running, cache.real, step)  # ((b k) v) each
        totals = score_continuations(running, processed.view(b, k, v))  # 1.
        scores, parent, token = best_candidates(totals, search.candidates_per_search(k), v)  # 2.
        candidates = extend(running, parent, token, scores, step, search.prompt_length,
                            *search.records(logprobs, processed, token, parent))
        ends = search.ends(token, step)
        pool = update_finished(pool, candidates, ends, k, step, length_penalty, ~improvable)  # 3.
        running, chosen = next_beams(candidates, ends, k)  # 4.
        # The cache follows the beams: beam j of prompt i continues candidate chosen[i, j], which
        # extends beam parent[i, chosen[i, j]] -- a gather of a gather, then the prompt's first row.
        cache.reorder((parent.gather(1, chosen) + first_row).flatten())
        improvable = still_improvable(pool, running.score[:, :1], improvable, early_stopping, length_penalty,  # 5.
                                      step + 1, max_new_tokens)
        if not bool(improvable.any()) or bool(ends.all()):
            break
        logits = model.next_logits(running.tokens[:, :, search.prompt_length + step].reshape(b * k), cache)
    return search.result(pool, num_return_sequences)


class BeamSetup:
    """What beam search and diverse beam search share around the steps: the checks, the
    processors, the prefill, the per-step records, and turning the pool into a Generation."""

    def __init__(self, model, input_ids, *, attention_mask, num_beams, num_return_sequences, max_new_tokens,
                 length_penalty, early_stopping, eos_token_id, pad_token_id, min_new_tokens, no_repeat_ngram_size,
                 repetition_penalty, alternatives, keep_logprobs):
        self.prompt_real = real_prompt_tokens(model, input_ids, attention_mask, max_new_tokens)  # (b t)
        check_record_options(model, alternatives, keep_logprobs)
        v = model.config.vocab_size
        check_int("num_beams", num_beams, 1, v)  # more beams than tokens: the first step cannot fill them
        if v < 2:
            raise ValueError(f"beam search needs a vocabulary of at least 2 tokens (it keeps 2 x num_beams candidates), got {v}")
        check_int("num_return_sequences", num_return_sequences, 1, num_beams)
        check_float("length_penalty", length_penalty, *LENGTH_PENALTY_RANGE)
        if not (early_stopping is True or early_stopping is False
                or (isinstance(early_stopping, str) and early_stopping == "never")):
            raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
        self.rules = decoding_rules(model, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                    min_new_tokens=min_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size,
                                    repetition_penalty=repetition_penalty)
        if max_new_tokens == 0:
            raise ValueError("max_new_tokens must be >= 1 for beam search: there is nothing to rank otherwise")
        rows = input_ids.shape[0] * num_beams
        # per step: several (rows v) float32 tables (log-probs, processed, totals, their log-softmax)
        check_fits_in_memory(4 * rows * v * 4 * (2 if keep_logprobs else 1), f"beam search over {rows} beams x {v} tokens",
                             input_ids.device)
        self.model, self.input_ids, self.vocab = model, input_ids, v
        self.prompts, self.prompt_length = input_ids.shape
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        self.alternatives, self.keep_logprobs = alternatives, keep_logprobs
        self.eos = torch.tensor(self.rules.eos_ids, dtype=torch.long, device=input_ids.device)

    def candidates_per_search(self, k: int) -> int:
        """2k, or (1 + number of EOS ids) k: however many of them end, k can go on."""
        return max(2, 1 + len(self.rules.eos_ids)) * k

    def hypotheses(self, k: int, live: list[int]) -> Hypotheses:
        """k hypotheses per prompt; those in `live` start at score 0, the others at IMPOSSIBLE."""
        hyps = Hypotheses.empty(self.input_ids, k, self.max_new_tokens, self.rules.pad_token_id, IMPOSSIBLE, self.alternatives,
                                self.vocab if self.keep_logprobs else None)
        hyps.score[:, live] = 0.0
        return hyps

    def prefill(self, copies: int):
        """Run each prompt once, then copy its cache row and logits to its `copies` beams."""
        b = self.prompts
        cache = self.model.new_cache(b, self.prompt_length + self.max_new_tokens)
        logits = prefill(self.model, self.input_ids, self.prompt_real, cache)
        rows = torch.arange(b, device=logits.device).repeat_interleave(copies)  # ((b copies)): prompt of each beam
        return logits[rows], cache.take_rows(rows)

    def process(self, logits: Tensor, running: Hypotheses, real: Tensor, step: int, before=None) -> tuple[Tensor, Tensor]:
        """((b k) v) logits -> log-probs and processed log-probs; `before` (optional) acts first.
        real ((b k) s): the cache's record of which tokens of the running beams are real."""
        logprobs = logits.float().log_softmax(dim=-1)
        at = self.prompt_length + step
        start = logprobs if before is None else before(logprobs)
        return logprobs, self.rules.processors(start, running.tokens[:, :, :at].flatten(0, 1), real[:, :at], step)

    def records(self, logprobs: Tensor, processed: Tensor, token: Tensor, parent: Tensor) -> tuple[dict, dict]:
        """What this step records: per beam (b k ...), the entropy and alternatives of each beam's
        distribution; per candidate (b c), the chosen token's processed and own log-probability."""
        b, k, v = parent.shape[0], logprobs.shape[0] // parent.shape[0], self.vocab
        processed_logprobs = processed.log_softmax(dim=-1)
        entropy, ids, probs = summarize(processed_logprobs, self.alternatives)
        per_beam = {"entropy": entropy.view(b, k), "alternatives": ids.view(b, k, -1), "alternative_probs": probs.view(b, k, -1)}
        if self.keep_logprobs:
            per_beam["step_logprobs"] = processed_logprobs.view(b, k, v)
        place = parent * v + token  # the candidates' places in the flattened (k v) row
        per_candidate = {"step_score": processed.view(b, k * v).gather(1, place),
                         "step_logprob": logprobs.view(b, k * v).gather(1, place)}
        return per_beam, per_candidate

    def ends(self, token: Tensor, step: int) -> Tensor:
        """(b c): which candidates end: an EOS, or any at the last step."""
        if step == self.max_new_tokens - 1:
            return torch.ones_like(token, dtype=torch.bool)
        return torch.isin(token, self.eos)

    def result(self, pool: Hypotheses, count: int) -> Generation:
        """The best `count` of each prompt's pool (sorted best first), as a Generation of (b r) rows."""
        b = self.prompts
        best = pool.take(torch.topk(pool.final_score, count).indices)
        width = int(best.length.max())

        def rows(x: Tensor) -> Tensor:  # (b r ...) -> ((b r) ...), r = count
            return x.reshape(b * count, *x.shape[2:])

        new_real = torch.arange(width, device=best.tokens.device)[None, :] < rows(best.length)[:, None]  # ((b r) new)
        return Generation(
            sequences=rows(best.tokens)[:, : self.prompt_length + width],
            prompt_length=self.prompt_length,
            attention_mask=torch.cat([self.prompt_real.repeat_interleave(count, dim=0), new_real], dim=1).long(),
            scores=rows(best.step_score)[:, :width],
            token_logprobs=rows(best.step_logprob)[:, :width],
            entropy=rows(best.entropy)[:, :width],
            alternatives=rows(best.alternatives)[:, :width],
            alternative_probs=rows(best.alternative_probs)[:, :width],
            sequence_scores=rows(best.final_score),
            step_logprobs=None if best.step_logprobs is None else rows(best.step_logprobs)[:, :width],
        )

