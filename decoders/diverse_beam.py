"""Diverse beam search (Vijayakumar et al. 2016, "Diverse Beam Search").

The num_beams beams are split into num_beam_groups groups. At each step the groups are decoded in
turn, each by the steps of beam search (`beam.py`), and each group's scores are first lowered by
diversity_penalty for every beam of an earlier group that chose the same token at this step
(Hamming diversity): later groups are pushed away from what earlier groups just said. Every group
keeps its own pool of finished hypotheses; at the end the best of all pools are returned.

Mirrors `GenerationMixin._group_beam_search` and its `BeamSearchScorer` in transformers 4.55.4, the
last release that ships them, with three of its rules that 5.x beam search does not share: a group
is done when its pool is full and its best *candidate* of the step (an ending one included) cannot
beat the pool's worst; a done group's beams count as padding in later groups' penalty; and at the
last step the ending candidates join the pool as at any step, and then every running beam does.

Axes: b prompts, g groups, k beams of a group, c candidates, v vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from minigpt.checks import check_float, check_int

from .beam import BeamSetup, beam_search, best_candidates, extend, next_beams, score_continuations, still_improvable, \
    update_finished
from .generation import ALTERNATIVES, DecoderModel, Generation
from .processors import hamming_diversity


@torch.no_grad()
def diverse_beam_search(
    model: DecoderModel,
    input_ids: Tensor,
    *,
    num_beams: int,
    num_beam_groups: int,
    diversity_penalty: float,
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
    """The num_return_sequences best sequences per prompt over all groups, best first.

    Equals transformers 4.55.4 `generate(num_beams=..., num_beam_groups=..., diversity_penalty=...,
    do_sample=False)`. num_beams must be a multiple of num_beam_groups; with one group this is beam
    search (as generate() runs it). Other options as in `beam_search`.
    """
    check_int("num_beams", num_beams, 1)
    check_int("num_beam_groups", num_beam_groups, 1, num_beams)
    if num_beams % num_beam_groups:
        raise ValueError(f"num_beams ({num_beams}) must be divisible by num_beam_groups ({num_beam_groups}): "
                         "every group gets the same number of beams")
    check_float("diversity_penalty", diversity_penalty, 0.0, None)
    options = dict(max_new_tokens=max_new_tokens, length_penalty=length_penalty, early_stopping=early_stopping,
                   num_return_sequences=num_return_sequences, attention_mask=attention_mask, eos_token_id=eos_token_id,
                   pad_token_id=pad_token_id, min_new_tokens=min_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size,
                   repetition_penalty=repetition_penalty, alternatives=alternatives, keep_logprobs=keep_logprobs)
    if num_beam_groups == 1:
        return beam_search(model, input_ids, num_beams=num_beams, **options)
    search = BeamSetup(model, input_ids, num_beams=num_beams, **options)
    b, v, groups, k = search.prompts, search.vocab, num_beam_groups, num_beams // num_beam_groups  # k beams a group
    running = [search.hypotheses(k, live=[0]) for _ in range(groups)]  # every group starts from the prompt
    pools = [search.hypotheses(k, live=[]) for _ in range(groups)]
    improvable = [torch.ones(b, 1, dtype=torch.bool, device=input_ids.device) for _ in range(groups)]
    logits, cache = search.prefill(num_beams)  # cache rows (b g k)
    first_row = torch.arange(b, device=input_ids.device)[:, None] * num_beams  # (b 1)
    at = search.prompt_length
    for step in range(max_new_tokens):
        by_group = logits.view(b, groups, k, v)
        real = cache.real.view(b, groups, k, -1)  # the cache's record of which tokens are real
        chosen_so_far: list[Tensor] = []  # (b k) tokens of each earlier group at this step
        rows = []
        for g in range(groups):
            earlier = torch.cat(chosen_so_far, dim=1) if chosen_so_far else None
            penalise = None if earlier is None else (
                lambda logprobs: hamming_diversity(logprobs.view(b, k, v), earlier, diversity_penalty).flatten(0, 1))
            logprobs, processed = search.process(by_group[:, g].reshape(b * k, v), running[g], real[:, g].flatten(0, 1),
                                                 step, before=penalise)
            totals = score_continuations(running[g], processed.view(b, k, v))  # 1.
            scores, parent, token = best_candidates(totals, search.candidates_per_search(k), v)  # 2.
            candidates = extend(running[g], parent, token, scores, step, at, *search.records(logprobs, processed, token, parent))
            ends = torch.isin(token, search.eos)  # only EOS ends a candidate, even at the last step
            pools[g] = update_finished(pools[g], candidates, ends, k, step, length_penalty, ~improvable[g])  # 3.
            running[g], chosen = next_beams(candidates, ends, k)  # 4.
            rows.append(parent.gather(1, chosen) + g * k + first_row)  # the cache row each beam continues
            done_before = ~improvable[g]  # a group done at an earlier step offers only padding to the next groups
            chosen_so_far.append(torch.where(done_before, search.rules.pad_token_id, running[g].tokens[:, :, at + step]))
            improvable[g] = still_improvable(pools[g], scores[:, :1], improvable[g], early_stopping, length_penalty,  # 5.
                                             step + 1, max_new_tokens)
            if step == max_new_tokens - 1:  # 4.55.4's finalize: every running beam of a group not done joins its pool
                everyone = torch.ones_like(running[g].finished)
                pools[g] = update_finished(pools[g], running[g], everyone, k, step, length_penalty, ~improvable[g])
        cache.reorder(torch.cat(rows, dim=1).flatten())
        if not any(bool(i.any()) for i in improvable) or step == max_new_tokens - 1:
            break
        next_tokens = torch.stack([r.tokens[:, :, at + step] for r in running], dim=1)  # (b g k)
        logits = model.next_logits(next_tokens.reshape(b * num_beams), cache)
    pool = pools[0]
    for other in pools[1:]:
        pool = pool.joined(other)  # (b (g k)): the best of every group's pool compete
    return search.result(pool, num_return_sequences)
