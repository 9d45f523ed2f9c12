"""The map of symptoms to causes, in one place: every wrong idea `minigpt.check` can name, what a
learner reads to put it right, and how it is recognised.

A cause is recognised in one of two ways. Most have a *probe* (variants.py): the reference piece
with exactly that idea changed. When a learner's piece computes what a probe computes (on the same
weights and inputs, within float32's rounding), that idea is the one it gets wrong, and it is named
first. When no probe matches, the first failing property names its own cause (the `cause` of each
property in the suites), which says where to look rather than what is wrong.

`read` points at the README section or the course notebook where the idea is taught.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    key: str
    says: str  # what the piece does, as the learner would recognise it in their code
    read: str  # where the idea is taught


_ATTENTION = "notebooks/3-by-hand.ipynb, 'Attention of block 0, by hand'"
_BLOCK = "notebooks/3-by-hand.ipynb, 'A block of our own, swapped in'; README 'Swapping a component'"
_DECODING = "notebooks/1-decoding.ipynb"
_CONTRACT = "README 'Swapping a component' (the block contract)"
_ANALYSIS = "notebooks/2-attention.ipynb (head importance); minigpt/analysis/importance.py"
_POSITIONS = "'Attention Is All You Need', section 3.5; minigpt/check/positions.py"

CAUSES = {cause.key: cause for cause in [
    # ---- attention: scores, mask, softmax, weighted sum ------------------------------------
    Cause("no-scale", "the scores are not divided by sqrt(d): q kᵀ goes into the softmax as it is", _ATTENTION),
    Cause("scale-by-d", "the scores are divided by d, not by sqrt(d)", _ATTENTION),
    Cause("no-mask", "queries see the future: the scores are never masked with `allowed`", _ATTENTION),
    Cause("own-causal-mask", "the mask is a triangle of its own, not `allowed`: padding keys (and, with a cache, "
          "empty slots) are attended", _ATTENTION),
    Cause("mask-off-by-one", "the causal mask is off by one: each query also sees the next key", _ATTENTION),
    Cause("masked-to-zero", "masked scores are set to 0, not -inf: after the softmax masked keys still get weight",
          _ATTENTION),
    Cause("mask-after-softmax", "the mask is applied after the softmax: the rows of the pattern no longer sum to 1",
          _ATTENTION),
    Cause("softmax-over-queries", "softmax over the wrong axis: over queries (dim -2), not over keys (dim -1)",
          _ATTENTION),
    Cause("heads-split-order", "heads split in the wrong order: `b t (d h)` where GPT-2 lays out `b t (h d)`",
          _ATTENTION),
    Cause("cache-keys-as-values", "what goes into the KV cache is not what is attended without it (keys stored as "
          "values, or k and v swapped)", _CONTRACT),
    Cause("cache-contract", "the keys and values handed to `kv(k, v)` are not shaped (b h t d) with the model's "
          "heads and head width", _CONTRACT),
    # ---- the block ----------------------------------------------------------------------------
    Cause("post-ln", "LayerNorm after the residual sum (post-LN, as in the 2017 Transformer), where GPT-2 normalises "
          "each sublayer's input (pre-LN)", _BLOCK),
    Cause("no-attn-residual", "the attention sublayer's residual is missing: x = attn(ln_1(x)), not x + attn(ln_1(x))",
          _BLOCK),
    Cause("no-mlp-residual", "the MLP sublayer's residual is missing: x = mlp(ln_2(x)), not x + mlp(ln_2(x))", _BLOCK),
    Cause("norms-swapped", "ln_1 and ln_2 are swapped: ln_2 before attention, ln_1 before the MLP", _BLOCK),
    Cause("gelu-exact", "GELU computed exactly (erf), where GPT-2 was trained with its tanh approximation", _BLOCK),
    Cause("gelu-constant", "GELU's tanh approximation with a wrong constant (0.044715 x³ inside sqrt(2/π)(x + ...))",
          _BLOCK),
    Cause("relu", "ReLU where GPT-2 uses GELU", _BLOCK),
    Cause("no-activation", "no activation between the MLP's two projections", _BLOCK),
    Cause("norm-unbiased", "the variance is the unbiased one (divided by n - 1); LayerNorm divides by n", _BLOCK),
    Cause("norm-eps-outside", "eps is added to the standard deviation, not to the variance under the square root",
          _BLOCK),
    Cause("norm-wrong-axis", "normalised over the wrong axis (positions, not features)", _BLOCK),
    Cause("norm-no-affine", "the norm's weight and bias are not applied", _BLOCK),
    Cause("gpt2-names", "the parameters do not have GPT-2's names and shapes, so GPT-2's weights cannot load",
          _BLOCK),
    # ---- decoding -----------------------------------------------------------------------------
    Cause("top-p-drops-crossing", "top-p drops the token that crosses the mass; the nucleus includes it", _DECODING),
    Cause("top-p-on-logits", "top-p sums logits (or unnormalised scores), not probabilities", _DECODING),
    Cause("top-p-keeps-tail", "top-p keeps the least likely tokens (sorted ascending), not the most likely", _DECODING),
    Cause("top-k-off-by-one", "top-k keeps one token too many or too few", _DECODING),
    Cause("top-k-keeps-least", "top-k keeps the k least likely tokens", _DECODING),
    Cause("penalty-divides-negative", "the repetition penalty divides every repeated token's logit, so a negative one "
          "goes up: the repeated token becomes more likely", _DECODING),
    Cause("penalty-per-occurrence", "the repetition penalty is applied once per occurrence; CTRL applies it once per "
          "distinct token", _DECODING),
    Cause("temperature-multiplies", "the logits are multiplied by the temperature, not divided", _DECODING),
    Cause("sampler-argmax", "the sampler always takes the most likely token: it never draws", _DECODING),
    Cause("sampler-ignores-logits", "the sampler draws uniformly: the logits do not weight the draw", _DECODING),
    Cause("sampler-banned", "a banned token (logit -inf) can be drawn", _DECODING),
    Cause("greedy-first-position", "the next token is read from the first position's logits, not the last's",
          _DECODING),
    Cause("greedy-not-appended", "the chosen token is not fed back: every step sees the prompt alone", _DECODING),
    Cause("entropy-bits", "entropy in bits (log2); the course measures it in nats (natural log)",
          "notebooks/2-attention.ipynb"),
    Cause("entropy-nan", "0 · log 0 is left as NaN; a key with probability 0 adds nothing to the entropy",
          "notebooks/2-attention.ipynb"),
    Cause("entropy-wrong-axis", "entropy over the wrong axis: over queries, not over each query's keys",
          "notebooks/2-attention.ipynb"),
    Cause("entropy-sign", "the entropy's minus sign is missing: -Σ p log p", "notebooks/2-attention.ipynb"),
    Cause("beam-scores-not-added", "the beams' running scores are not added to the log-probs: each step ranks "
          "tokens as if every beam had just started", _DECODING),
    Cause("beam-each-alone", "each beam keeps its own best token: the k best are not taken over every beam x token "
          "together", _DECODING),
    Cause("beam-index", "the beam and the token are read from the flattened index the wrong way round: for a "
          "(k v) row, the beam is i // v and the token i % v", _DECODING),
    Cause("importance-signed", "the gradient's sign is kept: importance is its size, |∂L/∂ξ|", _ANALYSIS),
    Cause("importance-not-shifted", "the loss compares the logits at position i with token i, not token i + 1",
          _ANALYSIS),
    Cause("importance-loss-sum", "the loss is summed over the tokens, not averaged", _ANALYSIS),
    Cause("importance-of-logits", "the gradient is of the logits' sum, not of the loss", _ANALYSIS),
    Cause("positions-halves", "sines in the first half and cosines in the second: the paper interleaves them "
          "(sin at 2i, cos at 2i + 1)", _POSITIONS),
    Cause("positions-exponent", "the wavelengths use i / n_embd, not 2i / n_embd", _POSITIONS),
    Cause("positions-swapped", "cosine at the even places and sine at the odd ones", _POSITIONS),
    # ---- general ------------------------------------------------------------------------------
    Cause("not-written", "not written yet: it raises NotImplementedError", "the exercise's own cell"),
    Cause("shape", "the output's shape or dtype is not the contract's", _CONTRACT),
    Cause("crash", "the piece raised an error on a valid input", _CONTRACT),
    Cause("no-gradient", "some parameter gets no gradient: it is not used, or used through .detach() / .data / "
          "torch.no_grad()", _BLOCK),
    Cause("tokenizer-bytes", "not byte-level: some text does not come back from decode(encode(text))",
          "README 'A tour' (the tokenizer)"),
    Cause("tokenizer-merges", "the ids differ from GPT-2's: the pre-tokenization pattern or the merge order",
          "README 'A tour' (the tokenizer)"),
    Cause("unknown", "it differs from the reference, and no known wrong idea computes what it does; compare "
          "activation by activation with the hook points", "README 'Reading, patching, ablating and steering "
          "activations'"),
]}
