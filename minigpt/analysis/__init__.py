"""Looking inside GPT-2: the loss, which heads matter, what each head attends to, what each layer
would predict. One concept a file; each function takes a model and a batch and returns tensors.

- `lm_loss`: mean next-token negative log-likelihood over real tokens (differentiable).
- `head_importance`: |∂ loss / ∂ head gate|, Michel, Levy & Neubig 2019.
- `prune_heads`: remove heads for good; equals masking them. `prune_by_importance`: the paper's loop.
  `mask_least_important`: one round of mask and recompute, never closing a layer's last head.
- `attention_entropy`: how spread out each head's attention is, in nats.
- `logit_lens`: every layer's residual stream read through the output head (nostalgebraist 2020).
"""

from .entropy import attention_entropy
from .importance import head_importance
from .logit_lens import logit_lens
from .loss import lm_loss, predicted
from .pruning import PruningCurve, mask_least_important, masked_heads, prune_by_importance, prune_heads, pruned_heads

__all__ = ["lm_loss", "predicted", "head_importance", "prune_heads", "pruned_heads", "mask_least_important", "masked_heads",
           "prune_by_importance", "PruningCurve", "attention_entropy", "logit_lens"]
