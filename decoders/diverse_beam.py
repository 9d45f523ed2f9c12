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

from .beam import BEAM_OPTIONS, TRANSFORMERS_4, BeamSearch, beam_search
from .generation import DecoderModel, Generation, check_model
from .options import DecodingOptions, decoding_options
from .processors import hamming_diversity

# The penalty is subtracted from log-probabilities (a few tens at most) up to num_beams times; far
# beyond 1e4 a penalised score nears beam search's -1e9 stand-in for log 0 and would rank as one.
DIVERSITY_RANGE = (0.0, 1e4)


@torch.no_grad()
def diverse_beam_search(model: DecoderModel, input_ids: Tensor, *, num_beams: int, num_beam_groups: int,
                        diversity_penalty: float, max_new_tokens: int | None = None, length_penalty: float = 1.0,
                        early_stopping: bool | str = False, num_return_sequences: int = 1, keep_tree: bool = False,
                        attention_mask: Tensor | None = None, options: DecodingOptions | None = None,
                        **shared) -> Generation:
    """The num_return_sequences best sequences per prompt over all groups, best first.

    Equals transformers 4.55.4 `generate(num_beams=..., num_beam_groups=..., diversity_penalty=...,
    do_sample=False)`. num_beams must be a multiple of num_beam_groups; with one group this is beam
    search (as generate() runs it). keep_tree: every group's candidates side by side, each step.
    Other options as in `beam_search`.
    """
    check_model(model)
    options = decoding_options("diverse_beam_search", max_new_tokens, options, shared,
                               own=[*BEAM_OPTIONS, "num_beam_groups", "diversity_penalty"])
    check_int("num_beams", num_beams, 1)
    check_int("num_beam_groups", num_beam_groups, 1, num_beams)
    if num_beams % num_beam_groups:
        raise ValueError(f"num_beams ({num_beams}) must be divisible by num_beam_groups ({num_beam_groups}): "
                         "every group gets the same number of beams")
    check_float("diversity_penalty", diversity_penalty, *DIVERSITY_RANGE)
    beams = dict(max_new_tokens=max_new_tokens, length_penalty=length_penalty, early_stopping=early_stopping,
                 num_return_sequences=num_return_sequences, keep_tree=keep_tree, attention_mask=attention_mask)
    if num_beam_groups == 1:
        return beam_search(model, input_ids, num_beams=num_beams, options=options, **beams)
    search = BeamSearch(model, input_ids, num_beams=num_beams, groups=num_beam_groups, options=options,
                        conventions=TRANSFORMERS_4, **beams)
    b, v, k, at = search.prompts, search.vocab, search.k, search.prompt_length  # k beams a group
    running, pools, improvable = search.start()  # every group starts from the prompt
    logits, cache = search.prefill()  # cache rows (b g k)
    for step in range(max_new_tokens):
        by_group = logits.view(b, num_beam_groups, k, v)
        real = cache.real.view(b, num_beam_groups, k, -1)  # the cache's record of which tokens are real
        chosen_so_far: list[Tensor] = []  # (b k) tokens of each earlier group at this step
        rows = []
        for g in range(num_beam_groups):
            done_before = ~improvable[g]  # a group done at an earlier step offers only padding to the next groups
            penalise = None if not chosen_so_far else (lambda logprobs, earlier=torch.cat(chosen_so_far, dim=1):
                hamming_diversity(logprobs.view(b, k, v), earlier, diversity_penalty).flatten(0, 1))
            logits_g, real_g = by_group[:, g].reshape(b * k, v), real[:, g].flatten(0, 1)  # ((b k) ...)
            running[g], pools[g], improvable[g], continued = search.group_step(
                g, logits_g, running[g], pools[g], improvable[g], real_g, step, before=penalise)
            rows.append(continued)
            just_chosen = running[g].tokens[:, :, at + step]  # (b k)
            chosen_so_far.append(torch.where(done_before, search.rules.pad_token_id, just_chosen))
        cache.reorder(search.cache_rows(rows))
        if not any(bool(i.any()) for i in improvable) or step == max_new_tokens - 1:
            break
        logits = model.next_logits(search.last_tokens(running, step), cache)
    pool = pools[0]
    for other in pools[1:]:
        pool = pool.joined(other)  # (b (g k)): the best of every group's pool compete
    return search.result(pool)
