"""Decoders: logits -> tokens. Greedy, sampling, beam search, diverse beam search, contrastive
search and speculative decoding (a draft model guessing ahead) over a KV-cached GPT, with transformers' generate() semantics, and small logits processors
they compose."""

from . import processors
from .beam import beam_search
from .contrastive import contrastive_search
from .diverse_beam import diverse_beam_search
from .generation import DecoderModel, Generation, sequence_logprob
from .greedy import greedy
from .options import DecodingOptions
from .records import BeamTree, TreeStep
from .sampling import sample
from .speculative import speculative

__all__ = ["greedy", "sample", "speculative", "beam_search", "diverse_beam_search", "contrastive_search", "DecoderModel", "Generation",
           "DecodingOptions", "BeamTree", "TreeStep", "sequence_logprob", "processors"]
