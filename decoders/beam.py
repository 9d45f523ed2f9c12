"""Beam search: keep the num_beams best partial sequences, and a pool of the best finished ones.

Mirrors `GenerationMixin._beam_search` in transformers' `generation/utils.py` (5.x), step for step:

1. Each live beam's next-token log-probabilities (log-softmax, then the processors) are added to
   the beam's running score. At the first step only beam 0 is live: the others start at -1e9.
2. Of all beams x vocabulary, the best 2 * num_beams candidates are kept: enough that num_beams
   remain even if num_beams of them end in EOS.
3. A candidate that ends in EOS (or reaches max_new_tokens) and ranks in the first num_beams
   joins the finished pool with score sum(log-probs) / generated_length ** length_penalty. The
   pool keeps its best num_beams.
4. The best num_beams candidates that did not finish are the next beams; the KV cache's rows
   are reordered to follow them.
5. Stop when early_stopping=True and the pool is full, or when the pool is full and the best
   running beam can no longer beat the worst finished one (judged at its current length, or at
   max_new_tokens with early_stopping="never" and a positive length penalty).

Axes: b prompts, k beams, c = 2k candidates, v vocabulary, L = prompt + max_new_tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from minigpt.checks import check_fits_in_memory, check_float, check_int

from .generation import (ALTERNATIVES, LENGTH_PENALTY_RANGE, Generation, check_options, check_prompt,
                         check_record_options, summarize)
from .processors import chain

IMPOSSIBLE = -1.0e9  # transformers' stand-in for log 0: finite, so sums with it stay ordered

Beams = dict[str, Tensor]  # every tensor is (b k ...): one entry per hypothesis


def take(beams: Beams, index: Tensor) -> Beams:
    """Hypotheses index (b m) of each prompt, every field alike: (b k ...) -> (b m ...)."""
    out = {}
    for name, x in beams.items():
        out[name] = torch.take_along_dim(x, index.view(*index.shape, *[1] * (x.dim() - 2)), dim=1)
    return out


def merge(first: Beams, second: Beams) -> Beams:
    return {name: torch.cat([first[name], second[name]], dim=1) for name in first}


@torch.no_grad()  # not inference_mode: its tensors could not feed sequence_logprob with gradients
def beam_search(
    model,
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
    prompt_real = check_prompt(model, input_ids, attention_mask, max_new_tokens)
    check_record_options(model, alternatives, keep_logprobs)
    v = model.config.vocab_size
    check_int("num_beams", num_beams, 1, v)  # more beams than tokens: the first step cannot fill them
    if v < 2:
        raise ValueError(f"beam search needs a vocabulary of at least 2 tokens (it keeps 2 x num_beams candidates), got {v}")
    check_int("num_return_sequences", num_return_sequences, 1, num_beams)
    check_float("length_penalty", length_penalty, *LENGTH_PENALTY_RANGE)
    if not (early_stopping is True or early_stopping is False or (isinstance(early_stopping, str) and early_stopping == "never")):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    eos, pad = check_options(model, eos_token_id=eos_token_id, pad_token_id=pad_token_id, min_new_tokens=min_new_tokens,
                             no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty)
    if max_new_tokens == 0:
        raise ValueError("max_new_tokens must be >= 1 for beam search: there is nothing to rank otherwise")
    rows = input_ids.shape[0] * num_beams
    # per step: several (rows v) float32 tables (log-probs, processed, totals, their log-softmax)
    check_fits_in_memory(4 * rows * v * 4, f"beam search over {rows} beams x {v} tokens", input_ids.device)
    processors = chain(repetition=repetition_penalty, ngram=no_repeat_ngram_size,
                       min_new_tokens=min_new_tokens, eos_ids=eos)
    eos_tensor = torch.tensor(eos, dtype=torch.long, device=input_ids.device)

    b, prompt_length = input_ids.shape
    k, device = num_beams, input_ids.device
    total = prompt_length + max_new_tokens
    batch_rows = torch.arange(b, device=device)[:, None] * k  # (b 1): first cache row of each prompt

    def fresh(score: float) -> Beams:
        tokens = torch.full((b, k, total), pad, dtype=torch.long, device=device)
        tokens[:, :, :prompt_length] = input_ids[:, None, :]
        per_step = torch.zeros(b, k, max_new_tokens, device=device)
        per_alternative = torch.zeros(b, k, max_new_tokens, alternatives, device=device)
        return {
            "tokens": tokens, "score": torch.full((b, k), score, device=device),
            "done": torch.zeros(b, k, dtype=torch.bool, device=device),
            "length": torch.zeros(b, k, dtype=torch.long, device=device),
            "step_score": per_step, "step_logprob": per_step.clone(), "entropy": per_step.clone(),
            "alternatives": per_alternative.long(), "alternative_probs": per_alternative.clone(),
        } | ({"step_logprobs": torch.zeros(b, k, max_new_tokens, v, device=device)} if keep_logprobs else {})

    running, finished = fresh(0.0), fresh(IMPOSSIBLE)
    running["score"][:, 1:] = IMPOSSIBLE  # the k beams start as copies of one: only beam 0 is live
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)  # can a running beam still win?
    in_first_k = torch.arange(2 * k, device=device) < k  # (c): only these candidates may finish

    # Prefill once per prompt, then copy the cache to the k beams.
    cache = model.new_cache(b, total)
    logits = model(input_ids, attention_mask=prompt_real, cache=cache, only_last=True)[:, -1]
    logits, cache = logits.repeat_interleave(k, dim=0), cache.repeat_rows(k)  # ((b k) v)
    prompt_real = prompt_real.repeat_interleave(k, dim=0)

    for step in range(max_new_tokens):
        at = prompt_length + step  # the column this step fills
        logprobs = logits.float().log_softmax(dim=-1)  # ((b k) v)
        history = running["tokens"][:, :, :at].reshape(b * k, at)
        real = torch.cat([prompt_real, prompt_real.new_ones(b * k, step)], dim=1)
        processed = processors(logprobs, history, real, step)  # ((b k) v)

        # 1-2. every beam x token, scored by its running total; keep the best 2k
        totals = processed.view(b, k, v) + running["score"][:, :, None]
        cand_score, flat = torch.topk(totals.view(b, k * v), 2 * k)  # (b c)
        parent, token = flat // v, flat % v
        cand = take(running, parent)
        cand["tokens"][:, :, at] = token
        cand["score"] = cand_score
        cand["length"] = torch.full_like(token, step + 1)
        cand["step_score"][:, :, step] = processed.view(b, k * v).gather(1, flat)
        cand["step_logprob"][:, :, step] = logprobs.view(b, k * v).gather(1, flat)
        processed_logprobs = processed.log_softmax(dim=-1)
        entropy, alt_ids, alt_probs = summarize(processed_logprobs, alternatives)
        cand["entropy"][:, :, step] = entropy.view(b, k).gather(1, parent)
        if keep_logprobs:
            cand["step_logprobs"][:, :, step] = torch.take_along_dim(processed_logprobs.view(b, k, v), parent[..., None], dim=1)
        cand["alternatives"][:, :, step] = torch.take_along_dim(alt_ids.view(b, k, -1), parent[..., None], dim=1)
        cand["alternative_probs"][:, :, step] = torch.take_along_dim(alt_probs.view(b, k, -1), parent[..., None], dim=1)

        ends = torch.isin(token, eos_tensor)  # (b c); all False without an EOS
        if step == max_new_tokens - 1:
            ends = torch.ones_like(ends)  # at the maximum length every candidate is final

        # 4. the next beams: the best k candidates that did not end
        still_running = cand_score + ends.float() * IMPOSSIBLE
        chosen = torch.topk(still_running, k).indices  # (b k)
        next_running = take(cand, chosen)
        next_running["score"] = still_running.gather(1, chosen)

        # 3. the finished pool: candidates that ended among the first k, length-normalised
        joins = ends & in_first_k
        normalised = cand_score / ((step + 1) ** length_penalty)
        pool_full = finished["done"].all(dim=1, keepdim=True) & (early_stopping is True)
        normalised = normalised + pool_full.float() * IMPOSSIBLE
        normalised = normalised + (~improvable).float() * IMPOSSIBLE
        normalised = normalised + (~joins) * IMPOSSIBLE
        cand["score"], cand["done"] = normalised, joins
        merged = merge(finished, cand)
        finished = take(merged, torch.topk(merged["score"], k).indices)

        running = next_running
        cache.reorder((parent.gather(1, chosen) + batch_rows).view(-1))  # cache rows follow their beams

        # 5. stop?
        generated = step + 1
        best_length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else generated
        best_possible = running["score"][:, :1] / (best_length**length_penalty)
        worst_done = torch.where(finished["done"], finished["score"].min(dim=1, keepdim=True).values, IMPOSSIBLE)
        improvable = improvable & (best_possible > worst_done).any(dim=1, keepdim=True)
        all_full = bool(finished["done"].all()) and early_stopping is True
        if not bool(improvable.any()) or all_full or bool(ends.all()):
            break
        logits = model(running["tokens"][:, :, at].reshape(b * k, 1), cache=cache, only_last=True)[:, -1]

    best = take(finished, torch.arange(num_return_sequences, device=device).expand(b, -1))
    width = int(best["length"].max())
    rows = b * num_return_sequences

    def flat(name: str) -> Tensor:
        x = best[name]
        return x.reshape(rows, *x.shape[2:])

    new_real = torch.arange(width, device=device)[None, :] < flat("length")[:, None]  # (rows width)
    prompt_mask = prompt_real.view(b, k, -1)[:, :num_return_sequences].reshape(rows, -1)
    return Generation(
        sequences=flat("tokens")[:, : prompt_length + width],
        prompt_length=prompt_length,
        attention_mask=torch.cat([prompt_mask, new_real], dim=1).long(),
        scores=flat("step_score")[:, :width],
        token_logprobs=flat("step_logprob")[:, :width],
        entropy=flat("entropy")[:, :width],
        alternatives=flat("alternatives")[:, :width],
        alternative_probs=flat("alternative_probs")[:, :width],
        sequence_scores=flat("score"),
        step_logprobs=flat("step_logprobs")[:, :width] if keep_logprobs else None,
    )
