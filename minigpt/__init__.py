"""minigpt: GPT-2 from scratch, written to be read.

Data flow: Tokenizer (text -> ids) -> GPT (ids -> logits) -> decoders (logits -> ids) -> text.
"""

from . import analysis
from .attention import AttendFn, CausalSelfAttention, explicit_attention, fused_attention
from .block import TransformerBlock, gpt2_block
from .config import GPTConfig
from .embedding import TokenEmbedding
from .kv_cache import KVCache
from .mlp import MLP, gelu_new
from .model import GPT, Trace
from .tokenizer import Tokenizer

__all__ = [
    "AttendFn", "CausalSelfAttention", "explicit_attention", "fused_attention",
    "TransformerBlock", "gpt2_block", "GPTConfig", "KVCache", "MLP", "gelu_new",
    "GPT", "Trace", "analysis", "Tokenizer", "TokenEmbedding",
]
