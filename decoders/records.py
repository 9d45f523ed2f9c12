"""What a `Generation` reports, taken beside the search: the search never reads any of it.

`Recorder` serves the decoders that choose one token per row per step (greedy, sampling,
contrastive search): each step it keeps the chosen token's processed and own log-probability,
the entropy and likeliest alternatives of the distribution it was chosen from, and with
keep_logprobs that whole distribution. `BeamRecorder` keeps the same for beam search, per beam
and per candidate, and finds each returned sequence's values by walking its path back through
the steps; with keep_tree it also keeps every candidate's fate (`BeamTree`).

Axes: b rows (beam search: prompts), k beams, c candidates, v vocabulary, a alternatives,
new generated positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .generation import Generation


def summarize(logprobs: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """(... v) log-probabilities -> entropy (...), the `count` likeliest ids (... a), their probabilities (... a).
    A token a processor removed (log p = -inf) is never listed: its id is -1."""
    probs = logprobs.exp()
    # a removed token has p = 0 and log p = -inf; clamping makes its term 0 * (finite) = 0, not NaN
    entropy = -(probs * logprobs.clamp(min=torch.finfo(logprobs.dtype).min)).sum(dim=-1)
    top = torch.topk(logprobs, count, dim=-1)
    removed = ~(top.values > float("-inf"))  # -inf, or NaN where every token was removed
    return entropy.nan_to_num(0.0), top.indices.masked_fill(removed, -1), top.values.exp().masked_fill(removed, 0.0)


def distribution(logprobs: Tensor, alternatives: int, keep_logprobs: bool) -> dict[str, Tensor]:
    """What is recorded of the distribution a token is chosen from, given as log-probabilities (... v)."""
    entropy, ids, probs = summarize(logprobs, alternatives)
    return {"entropy": entropy, "alternatives": ids, "alternative_probs": probs} | (
        {"step_logprobs": logprobs} if keep_logprobs else {})


class Recorder:
    """One token per row per step: `step` after each choice, `generation` at the end."""

    def __init__(self, alternatives: int, keep_logprobs: bool, vocab_size: int):
        self.alternatives, self.keep_logprobs, self.vocab_size = alternatives, keep_logprobs, vocab_size
        self.steps: list[dict[str, Tensor]] = []

    def step(self, logits: Tensor, processed: Tensor, chosen: Tensor, alive: Tensor) -> None:
        """logits and processed (b v) in float32, the tokens chosen (b), the rows still going (b)."""
        processed_logprobs = processed.log_softmax(dim=-1)
        own = processed_logprobs if processed is logits else logits.log_softmax(dim=-1)  # no processor: the same
        self.steps.append(distribution(processed_logprobs, self.alternatives, self.keep_logprobs) | {
            "scores": processed_logprobs.gather(1, chosen[:, None])[:, 0].masked_fill(~alive, 0.0),
            "token_logprobs": own.gather(1, chosen[:, None])[:, 0].masked_fill(~alive, 0.0),
            "alive": alive,
        })

    def generation(self, tokens: Tensor, prompt_real: Tensor) -> Generation:
        """Stack the steps into a Generation: (b) per step -> (b new), (b a) -> (b new a). Steps run
        after every row stopped (until the loop's next check) are dropped."""
        prompt_length = prompt_real.shape[1]
        b, device = tokens.shape[0], tokens.device
        if self.steps:
            stacked = {name: torch.stack([record[name] for record in self.steps], dim=1) for name in self.steps[0]}
            steps = int(stacked["alive"].any(dim=0).sum())
            stacked = {name: value[:, :steps] for name, value in stacked.items()}
            tokens = tokens[:, : prompt_length + steps]
        else:  # max_new_tokens=0: the prompt alone
            nothing = torch.zeros(b, 0, device=device)
            stacked = {"scores": nothing, "token_logprobs": nothing, "entropy": nothing,
                       "alive": nothing.bool(), "alternatives": torch.zeros(b, 0, self.alternatives, dtype=torch.long,
                                                                           device=device),
                       "alternative_probs": torch.zeros(b, 0, self.alternatives, device=device)}
            stacked |= {"step_logprobs": torch.zeros(b, 0, self.vocab_size, device=device)} if self.keep_logprobs else {}
        alive = stacked.pop("alive")
        return Generation(sequences=tokens, prompt_length=prompt_length,
                          attention_mask=torch.cat([prompt_real, alive], dim=1).long(), **stacked)


@dataclass
class TreeStep:
    """Every candidate one step of beam search considered, (b c) each (c = all groups' candidates)."""

    parent: Tensor  # the beam it extends (its index among the beams of the step before)
    token: Tensor  # the token it appends
    score: Tensor  # its running score: the sum of its tokens' processed log-probs (-inf: banned)
    fate: Tensor  # j >= 0: it went on as beam j; FINISHED: it joined the pool of finished hypotheses; DROPPED


FINISHED, DROPPED = -1, -2


@dataclass
class BeamTree:
    """The whole search: `steps[n]` holds every candidate of step n. Beam j of step n is the
    candidate of step n whose fate is j; candidate i of step n + 1 extends beam parent[i]. A
    returned sequence's path (`Generation.paths`) names its candidate at each step."""

    steps: list[TreeStep]


class BeamRecorder:
    """Beam search's records: per step, each beam's distribution (b k ...) and each candidate's
    token log-probabilities (b c); the returned sequences' values are read back along their paths."""

    def __init__(self, alternatives: int, keep_logprobs: bool, keep_tree: bool):
        self.alternatives, self.keep_logprobs = alternatives, keep_logprobs
        self.per_beam: list[list[dict[str, Tensor]]] = []  # [step][group]
        self.per_candidate: list[list[dict[str, Tensor]]] = []
        self.tree: BeamTree | None = BeamTree([]) if keep_tree else None

    def step(self, group: int, logprobs: Tensor, processed: Tensor, parent: Tensor, token: Tensor, vocab: int) -> None:
        """One group's step: logprobs and processed ((b k) v), the candidates' parent beams and tokens (b c)."""
        if group == 0:
            self.per_beam.append([])
            self.per_candidate.append([])
        b = parent.shape[0]
        summary = distribution(processed.log_softmax(dim=-1), self.alternatives, self.keep_logprobs)
        self.per_beam[-1].append({name: value.view(b, value.shape[0] // b, *value.shape[1:])  # ((b k) ...) -> (b k ...)
                                  for name, value in summary.items()})
        place = parent * vocab + token  # the candidates' places in the flattened (k v) row
        self.per_candidate[-1].append({"scores": processed.view(b, -1).gather(1, place),
                                       "token_logprobs": logprobs.view(b, -1).gather(1, place), "parent": parent})

    def fates(self, group: int, beams: int, candidates: Tensor, scores: Tensor, joined: Tensor, chosen: Tensor) -> None:
        """With keep_tree: what became of one group's candidates (b c): joined the pool, went on as the
        beam at their place in `chosen` (b k), or were dropped. Indices are over all groups."""
        if self.tree is None:
            return
        b, c = candidates.shape
        fate = torch.full((b, c), DROPPED, dtype=torch.long, device=candidates.device)
        fate = fate.masked_fill(joined, FINISHED)
        fate.scatter_(1, chosen, torch.arange(chosen.shape[1], device=chosen.device).expand_as(chosen) + group * beams)
        parent = self.per_candidate[-1][group]["parent"] + group * beams
        part = TreeStep(parent=parent, token=candidates, score=scores, fate=fate)
        if group == 0:
            self.tree.steps.append(part)
        else:  # the groups' candidates side by side
            last = self.tree.steps[-1]
            self.tree.steps[-1] = TreeStep(*(torch.cat([getattr(last, f), getattr(part, f)], dim=1)
                                             for f in ("parent", "token", "score", "fate")))

    def finished_at_the_end(self, first: int, chosen: Tensor, joined: Tensor) -> None:
        """With keep_tree, 4.55.4's finalize: after the last step each running beam, the candidate
        `chosen` (b k) of its group (whose first candidate is `first` over every group's), joined
        the pool or, the search going no further, was dropped; `joined` (b k) says which."""
        if self.tree is not None:
            self.tree.steps[-1].fate.scatter_(1, chosen + first, torch.where(joined, FINISHED, DROPPED))

    def values(self, paths: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        """The records of hypotheses (b r) whose candidate at each step is `paths` (b r new), over every
        group's candidates, `lengths` (b r) steps long: (b r new ...) each, zeros past a hypothesis' end."""
        new = paths.shape[2]
        values: dict[str, list[Tensor]] = {}
        for step in range(max(new, 1)):  # one step even for none: its tables give the shapes of the empty result
            groups_beams, groups_candidates = self.per_beam[step], self.per_candidate[step]
            k, c = groups_beams[0]["entropy"].shape[1], groups_candidates[0]["parent"].shape[1]
            candidate = paths[:, :, min(step, new - 1)].clamp(min=0) if new else torch.zeros_like(lengths)  # (b r)
            parent = torch.cat([g["parent"] for g in groups_candidates], dim=1).gather(1, candidate)
            beam = parent + candidate // c * k  # the beam it extends, over every group's beams
            for name in groups_beams[0]:
                values.setdefault(name, []).append(_along(torch.cat([g[name] for g in groups_beams], dim=1), beam))
            for name in ("scores", "token_logprobs"):
                values.setdefault(name, []).append(torch.cat([g[name] for g in groups_candidates], dim=1).gather(1, candidate))
        live = torch.arange(new, device=paths.device) < lengths[:, :, None]  # (b r new)
        stacked = {name: torch.stack(steps, dim=2)[:, :, :new] for name, steps in values.items()}
        return {name: torch.where(live.view(*live.shape, *[1] * (v.dim() - 3)), v, torch.zeros((), dtype=v.dtype,
                                                                                             device=v.device))
                for name, v in stacked.items()}


def _along(table: Tensor, index: Tensor) -> Tensor:
    """table (b x ...) read at index (b r) along its second axis: (b r ...)."""
    return torch.take_along_dim(table, index.view(*index.shape, *[1] * (table.dim() - 2)), dim=1)
