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

`BeamSearch.group_step` is these five steps for one group of beams; beam search is one group,
diverse beam search (`diverse_beam.py`) runs it for each group in turn. What a Generation reports
(entropy, alternatives, log-probs) is taken beside the steps by a `BeamRecorder`, which never
feeds back into the search; with keep_tree=True it also keeps every candidate of every step and
its fate (went on as beam j, finished, dropped), and each returned sequence's path through them.

Axes: b prompts (one search each), k beams, c candidates, v vocabulary, s = prompt + max_new_tokens,
a alternatives kept per step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from minigpt.checks import check_fits_in_memory, check_float, check_int

from .generation import DecoderModel, Generation, check_model, prefill, real_prompt_tokens
from .options import DecodingOptions, decoding_options
from .records import BeamRecorder

# transformers' stand-in for log 0: finite, so a sum with it still orders correctly, and a beam
# that holds it is never chosen over one that does not
IMPOSSIBLE = -1.0e9
# length_penalty is an exponent of the generated length (<= 1024): 1024 ** 10 is still a float32,
# while beyond it the normalised scores overflow to inf or underflow to ties.
LENGTH_PENALTY_RANGE = (-10.0, 10.0)


@dataclass
class Hypotheses:
    """k hypotheses for each of b searches; every field is (b k ...), one entry per hypothesis."""

    tokens: Tensor  # (b k s): the prompt, then the tokens chosen so far (pad beyond)
    score: Tensor  # (b k): the sum of the processed log-probs of its tokens (IMPOSSIBLE: not a hypothesis)
    final_score: Tensor  # (b k): in the pool, score / length ** length_penalty, what it ranks by; else IMPOSSIBLE
    finished: Tensor  # (b k) bool: a finished hypothesis in the pool (False for an empty slot)
    length: Tensor  # (b k): new tokens, EOS included
    path: Tensor  # (b k new): which candidate of each step it is (over every group's candidates); -1 before

    @classmethod
    def empty(cls, prompt: Tensor, k: int, max_new_tokens: int, pad: int) -> Hypotheses:
        """k copies of each prompt row (b t), none of them a hypothesis yet (score IMPOSSIBLE)."""
        b, t = prompt.shape
        tokens = torch.full((b, k, t + max_new_tokens), pad, dtype=torch.long, device=prompt.device)
        tokens[:, :, :t] = prompt[:, None, :]
        return cls(tokens=tokens, score=torch.full((b, k), IMPOSSIBLE, device=prompt.device),
                   final_score=torch.full((b, k), IMPOSSIBLE, device=prompt.device),
                   finished=torch.zeros(b, k, dtype=torch.bool, device=prompt.device),
                   length=torch.zeros(b, k, dtype=torch.long, device=prompt.device),
                   path=torch.full((b, k, max_new_tokens), -1, dtype=torch.long, device=prompt.device))

    def take(self, index: Tensor) -> Hypotheses:
        """The hypotheses `index` (b i) picks in each search, every field alike: (b k ...) -> (b i ...)."""
        def gather(x: Tensor) -> Tensor:
            return torch.take_along_dim(x, index.view(*index.shape, *[1] * (x.dim() - 2)), dim=1)
        return Hypotheses(**{f.name: gather(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def joined(self, other: Hypotheses) -> Hypotheses:
        """Both sets side by side: (b k ...) and (b i ...) -> (b (k+i) ...)."""
        return Hypotheses(**{f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)], dim=1)
                             for f in dataclasses.fields(self)})


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
           first: int) -> Hypotheses:
    """The candidates (b c) as hypotheses: their parent beam's history, the new token and the running
    score; `first`: the index of this group's first candidate among every group's, for the path."""
    candidates = running.take(parent)
    candidates.tokens[:, :, prompt_length + step] = token
    candidates.score = scores
    candidates.length = torch.full_like(token, step + 1)
    candidates.path[:, :, step] = torch.arange(token.shape[1], device=token.device) + first
    return candidates


def update_finished(pool: Hypotheses, candidates: Hypotheses, ends: Tensor, k: int, step: int,
                    length_penalty: float, closed: Tensor) -> tuple[Hypotheses, Tensor]:
    """3. The pool after the ending candidates among the first k join it (a candidate ranked lower
    would not have been a beam had it gone on), scored sum / length ** length_penalty, and the
    best k kept; and which candidates joined (b c). closed (b 1): searches whose pool takes no
    more. A candidate whose score is -inf (every token banned) never joins."""
    joins = ends & (torch.arange(ends.shape[1], device=ends.device) < k) & ~closed & (candidates.score > float("-inf"))
    final = torch.where(joins, candidates.score / ((step + 1) ** length_penalty), IMPOSSIBLE)  # IMPOSSIBLE: stays out
    merged = pool.joined(dataclasses.replace(candidates, finished=joins, final_score=final))
    return merged.take(torch.topk(merged.final_score, k).indices), joins


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
def beam_search(model: DecoderModel, input_ids: Tensor, *, num_beams: int, max_new_tokens: int | None = None,
                length_penalty: float = 1.0, early_stopping: bool | str = False, num_return_sequences: int = 1,
                keep_tree: bool = False, attention_mask: Tensor | None = None, options: DecodingOptions | None = None,
                **shared) -> Generation:
    """The num_return_sequences best sequences per prompt, best first: rows (b r) of the result.

    Equals `transformers` `generate(num_beams=..., do_sample=False)` with the same options,
    `sequence_scores` its `sequences_scores`. length_penalty > 0 favours longer sequences,
    < 0 shorter ones; 0 ranks by plain log-probability. Each step weighs c = 2 x num_beams
    candidates per prompt ((1 + number of EOS ids) x num_beams with several EOS ids).
    keep_tree=True keeps them all (`Generation.tree`) and each returned row's path through them
    (`Generation.paths`). The shared options as in greedy. A candidate the processors banned never
    finishes; a returned row no hypothesis reached has sequence_scores -inf and no new tokens.
    """
    search = BeamSearch(model, input_ids, attention_mask=attention_mask, num_beams=num_beams, groups=1,
                        num_return_sequences=num_return_sequences, max_new_tokens=max_new_tokens,
                        length_penalty=length_penalty, early_stopping=early_stopping, keep_tree=keep_tree,
                        options=decoding_options("beam_search", max_new_tokens, options, shared, own=BEAM_OPTIONS),
                        conventions=TRANSFORMERS_5)
    (running,), (pool,), (improvable,) = search.start()
    logits, cache = search.prefill()  # cache rows (b k), in the order of running's
    for step in range(max_new_tokens):
        running, pool, improvable, rows = search.group_step(0, logits, running, pool, improvable, cache.real, step)
        cache.reorder(search.cache_rows([rows]))  # the cache follows the beams
        if not bool(improvable.any()) or step == max_new_tokens - 1:
            break
        logits = model.next_logits(search.last_tokens([running], step), cache)
    return search.result(pool)


BEAM_OPTIONS = ["num_beams", "length_penalty", "early_stopping", "num_return_sequences", "keep_tree"]


@dataclass(frozen=True)
class Conventions:
    """Where beam search (transformers 5.x) and diverse beam search (4.55.4, the last release with
    it) differ, so that one group step serves both."""

    last_step_ends: bool  # 5.x: at max_new_tokens every candidate ends; 4.55.4: only an EOS ends one,
    # and after the last step every running beam joins its pool
    judge_by_candidate: bool  # 4.55.4: a group is done when its best candidate (an ending one too) cannot
    # beat its pool's worst; 5.x: when its best running beam cannot


TRANSFORMERS_5, TRANSFORMERS_4 = Conventions(True, False), Conventions(False, True)


class BeamSearch:
    """What beam search and diverse beam search share: the checks, the prefill, one group's step
    (the five steps), and turning the pools into a Generation."""

    def __init__(self, model, input_ids, *, attention_mask, num_beams, groups, num_return_sequences, max_new_tokens,
                 length_penalty, early_stopping, keep_tree, options: DecodingOptions, conventions: Conventions):
        check_model(model)
        self.prompt_real = real_prompt_tokens(model, input_ids, attention_mask, max_new_tokens)  # (b t)
        v = model.config.vocab_size
        self.rules = options.rules(v)
        check_int("num_beams", num_beams, 1, v)  # more beams than tokens: the first step cannot fill them
        if v < 2:
            raise ValueError(f"beam search needs a vocabulary of at least 2 tokens (it keeps 2 x num_beams candidates), got {v}")
        check_int("num_return_sequences", num_return_sequences, 1, num_beams)
        check_float("length_penalty", length_penalty, *LENGTH_PENALTY_RANGE)
        if not (early_stopping is True or early_stopping is False
                or (isinstance(early_stopping, str) and early_stopping == "never")):
            raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
        if not isinstance(keep_tree, bool):
            raise ValueError(f"keep_tree must be True or False, got {keep_tree!r:.40}")
        if max_new_tokens == 0:
            raise ValueError("max_new_tokens must be >= 1 for beam search: there is nothing to rank otherwise")
        rows = input_ids.shape[0] * num_beams
        # per step: several (rows v) float32 tables (log-probs, processed, totals, their log-softmax);
        # kept: each step's alternatives and, with keep_logprobs, its whole rows
        kept = max_new_tokens * (options.alternatives * 12 + (v * 4 if options.keep_logprobs else 0))
        check_fits_in_memory(rows * (4 * v * 4 + kept), f"beam search over {rows} beams x {v} tokens x "
                             f"{max_new_tokens} steps", input_ids.device)
        self.model, self.input_ids, self.vocab, self.conventions = model, input_ids, v, conventions
        self.prompts, self.prompt_length = input_ids.shape
        self.max_new_tokens, self.num_beams, self.groups = max_new_tokens, num_beams, groups
        self.k = num_beams // groups  # beams of a group
        self.candidates = max(2, 1 + len(self.rules.eos_ids)) * self.k  # however many of them end, k can go on
        self.length_penalty, self.early_stopping = length_penalty, early_stopping
        self.num_return_sequences = num_return_sequences
        self.recorder = BeamRecorder(options.alternatives, options.keep_logprobs, keep_tree)
        self.eos = torch.tensor(self.rules.eos_ids, dtype=torch.long, device=input_ids.device)

    def start(self) -> tuple[list[Hypotheses], list[Hypotheses], list[Tensor]]:
        """Each group's running beams (copies of the prompt; only beam 0 live, at score 0), its empty
        pool, and whether its search can still improve (b 1)."""
        running = [Hypotheses.empty(self.input_ids, self.k, self.max_new_tokens, self.rules.pad_token_id)
                   for _ in range(self.groups)]
        for beams in running:
            beams.score[:, 0] = 0.0
        pools = [Hypotheses.empty(self.input_ids, self.k, self.max_new_tokens, self.rules.pad_token_id)
                 for _ in range(self.groups)]
        return running, pools, [torch.ones(self.prompts, 1, dtype=torch.bool, device=self.input_ids.device)
                                for _ in range(self.groups)]

    def prefill(self):
        """Run each prompt once, then copy its cache row and logits to its beams: rows (b g k)."""
        cache = self.model.new_cache(self.prompts, self.prompt_length + self.max_new_tokens)
        logits = prefill(self.model, self.input_ids, self.prompt_real, cache)
        rows = torch.arange(self.prompts, device=logits.device).repeat_interleave(self.num_beams)
        return logits[rows], cache.take_rows(rows)

    def group_step(self, g: int, logits: Tensor, running: Hypotheses, pool: Hypotheses, improvable: Tensor,
                   real: Tensor, step: int, before=None) -> tuple[Hypotheses, Hypotheses, Tensor, Tensor]:
        """The five steps for group g: its logits ((b k) v) and cache mask ((b k) s) -> its next beams,
        pool, improvable (b 1), and the beam (b k) each next beam continues. `before`: diverse beam
        search's penalty, applied to the log-probs before the processors."""
        b, k, v, at = self.prompts, self.k, self.vocab, self.prompt_length + step
        logprobs = logits.float().log_softmax(dim=-1)
        history = running.tokens[:, :, :at].flatten(0, 1)
        processed = self.rules.processors(logprobs if before is None else before(logprobs), history, real[:, :at], step)
        totals = score_continuations(running, processed.view(b, k, v))  # 1.
        scores, parent, token = best_candidates(totals, self.candidates, v)  # 2.
        self.recorder.step(g, logprobs, processed, parent, token, v)
        candidates = extend(running, parent, token, scores, step, self.prompt_length, g * self.candidates)
        last = step == self.max_new_tokens - 1
        every = last and self.conventions.last_step_ends
        ends = torch.ones_like(token, dtype=torch.bool) if every else torch.isin(token, self.eos)  # (b c)
        pool, joined = update_finished(pool, candidates, ends, k, step, self.length_penalty, ~improvable)  # 3.
        running, chosen = next_beams(candidates, ends, k)  # 4.
        self.recorder.fates(g, k, token, scores, joined, chosen)
        best = scores[:, :1] if self.conventions.judge_by_candidate else running.score[:, :1]
        improvable = still_improvable(pool, best, improvable, self.early_stopping, self.length_penalty,  # 5.
                                      step + 1, self.max_new_tokens)
        if last and not self.conventions.last_step_ends:  # 4.55.4's finalize: a group's running beams join
            pool, joined = update_finished(pool, running, torch.ones_like(running.finished), k, step,
                                           self.length_penalty, ~improvable)
            self.recorder.finished_at_the_end(g * self.candidates, chosen, joined)
        return running, pool, improvable, parent.gather(1, chosen)

    def cache_rows(self, rows: list[Tensor]) -> Tensor:
        """Each group's (b k) beams continued -> the cache rows ((b g k)) the next beams take."""
        first_row = torch.arange(self.prompts, device=rows[0].device)[:, None] * self.num_beams  # (b 1)
        return torch.cat([r + g * self.k + first_row for g, r in enumerate(rows)], dim=1).flatten()

    def last_tokens(self, running: list[Hypotheses], step: int) -> Tensor:
        """The tokens each group's beams just took, as the next step's input ((b g k))."""
        return torch.stack([r.tokens[:, :, self.prompt_length + step] for r in running], dim=1).flatten()

    def result(self, pool: Hypotheses) -> Generation:
        """The best num_return_sequences of each prompt's pool (best first), as a Generation of (b r) rows."""
        b, count = self.prompts, self.num_return_sequences
        best = pool.take(torch.topk(pool.final_score, count).indices)
        # a slot no hypothesis finished in (every continuation banned) is returned empty, scored -inf
        best.length = torch.where(best.finished, best.length, 0)
        best.tokens[:, :, self.prompt_length:] = best.tokens[:, :, self.prompt_length:].masked_fill(
            ~best.finished[:, :, None], self.rules.pad_token_id)
        width = int(best.length.max())
        paths = best.path[:, :, :width]
        records = self.recorder.values(paths, best.length)  # (b r width ...)

        def rows(x: Tensor) -> Tensor:  # (b r ...) -> ((b r) ...), r = count
            return x.reshape(b * count, *x.shape[2:])

        new_real = torch.arange(width, device=best.tokens.device)[None, :] < rows(best.length)[:, None]  # ((b r) new)
        return Generation(
            sequences=rows(best.tokens)[:, : self.prompt_length + width],
            prompt_length=self.prompt_length,
            attention_mask=torch.cat([self.prompt_real.repeat_interleave(count, dim=0), new_real], dim=1).long(),
            scores=rows(records["scores"]), token_logprobs=rows(records["token_logprobs"]),
            entropy=rows(records["entropy"]), alternatives=rows(records["alternatives"]),
            alternative_probs=rows(records["alternative_probs"]),
            sequence_scores=rows(torch.where(best.finished, best.final_score, float("-inf"))),
            step_logprobs=rows(records["step_logprobs"]) if "step_logprobs" in records else None,
            tree=self.recorder.tree, paths=rows(paths) if self.recorder.tree is not None else None,
        )
