"""GPT-2's hyperparameters, read strictly from a checkpoint's `config.json`.

Mirrors the fields of `transformers.GPT2Config` that change the architecture. A field we do not
understand is an error rather than a silent default: a config that asks for another activation or
a scaled attention describes a model this code does not build, and loading weights into it
would give wrong logits without a word.

The last six fields name swapped-in components (minigpt/components/); their defaults are GPT-2's.
A config that swaps any is written to config.json with `"model_type": "minigpt"` and the swaps
under `minigpt_components`, so `load_gpt2` builds the same model again and transformers refuses
the file rather than loading it as a GPT-2 with wrong logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checks import check_choice, check_float, check_int, check_readable, few

END_OF_TEXT_ID = 50256
VARIANT_TYPE = "minigpt"  # config.json's model_type for a model with swapped components
COMPONENTS = {"position": ("learned", "rope", "alibi"), "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu")}
COMPONENT_DEFAULTS = {"position": "learned", "norm": "layernorm", "mlp": "gelu", "n_kv_head": None, "qk_norm": False,
                      "window": None}


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: int | None = None  # MLP width; None means 4 * n_embd, as in GPT-2
    vocab_size: int = 50257
    n_positions: int = 1024  # the context: how many positions have an embedding
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0  # one rate for embeddings, attention weights and residuals
    # components (minigpt/components/), GPT-2's by default
    position: str = "learned"  # "learned" (an embedding added to the tokens'), "rope" or "alibi" (inside attention)
    norm: str = "layernorm"  # or "rmsnorm"
    mlp: str = "gelu"  # GELU (tanh) MLP, or "swiglu"
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None: one per query head
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before the scores
    window: int | None = None  # sliding-window attention: each query sees at most this many tokens (itself included)

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions"):
            check_int(name, getattr(self, name), low=1)
        if self.n_inner is not None:
            check_int("n_inner", self.n_inner, low=1)
        check_float("layer_norm_epsilon", self.layer_norm_epsilon, low=0.0, open_low=True)
        check_float("dropout", self.dropout, low=0.0, high=1.0, open_high=True)
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                "each head gets n_embd / n_head dimensions"
            )
        for name, choices in COMPONENTS.items():
            check_choice(name, getattr(self, name), choices)
        if self.n_kv_head is not None:
            check_int("n_kv_head", self.n_kv_head, 1, self.n_head)
            if self.n_head % self.n_kv_head:
                raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}): each key/value "
                                 "head serves the same number of query heads")
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"qk_norm must be True or False, got {self.qk_norm!r:.40}")
        if self.window is not None:
            check_int("window", self.window, low=1)
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions turn pairs of a head's dimensions, but the head width "
                             f"n_embd / n_head = {self.head_dim} is odd")

    @property
    def parameter_count(self) -> int:
        """Parameters of the model this config describes (the tied head counted once)."""
        e, m, d = self.n_embd, self.mlp_width, self.head_dim  # model width, MLP width, head width
        qkv = (self.n_head + 2 * self.kv_heads) * d  # c_attn's outputs
        fc = 2 * m if self.mlp == "swiglu" else m  # SwiGLU's c_fc makes the gate and the value
        per_width = 2 if self.norm == "layernorm" else 1  # a norm's parameters per unit: RMSNorm has no bias
        qk_norms = 2 * per_width * d if self.qk_norm else 0  # one norm for the queries, one for the keys
        block = 2 * per_width * e + (e * qkv + qkv) + qk_norms + (e * e + e) + (e * fc + fc) + (m * e + e)
        positions = self.n_positions * e if self.position == "learned" else 0
        return self.vocab_size * e + positions + self.n_layer * block + per_width * e

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head, or one per query head (GPT-2's multi-head attention)."""
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def mlp_width(self) -> int:
        """n_inner, else 4 n_embd (GPT-2); SwiGLU's three matrices take 8/3 n_embd (rounded up to a
        multiple of 8), which keeps the parameters of GELU's two (Shazeer 2020, section 2)."""
        if self.n_inner is not None:
            return self.n_inner
        return 4 * self.n_embd if self.mlp == "gelu" else -(-8 * self.n_embd // 24) * 8

    @property
    def components(self) -> dict[str, Any]:
        """The components swapped in, as config.json keeps them: {field: value} where not GPT-2's."""
        return {name: getattr(self, name) for name, default in COMPONENT_DEFAULTS.items()
                if getattr(self, name) != default}

    # ---- presets -------------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str) -> GPTConfig:
        """The shape of a published checkpoint (`gpt2`, `gpt2-medium`, ...) or `tiny` for tests."""
        if not isinstance(name, str):
            raise ValueError(f"a preset is named by a string such as 'gpt2', got {type(name).__name__}")
        short = name.removeprefix("openai-community/").removeprefix("distilbert/")
        if short not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return PRESETS[short]

    # ---- config.json ---------------------------------------------------------------------------

    @classmethod
    def from_json(cls, path: str | Path) -> GPTConfig:
        path = check_readable(Path(path), "config file")
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(fields, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(fields).__name__}")
        try:
            return cls.from_hf_dict(fields)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    @classmethod
    def from_hf_dict(cls, fields: dict[str, Any]) -> GPTConfig:
        """Build from the keys transformers writes for GPT-2; refuse what would change the model."""
        if not isinstance(fields, dict):
            raise ValueError(f"a GPT-2 config is a dict of config.json's keys, got {type(fields).__name__}")
        fields, components = _components_of(fields)
        unknown = sorted(set(fields) - set(_USED) - set(_MUST_EQUAL) - _IGNORED)
        if unknown:
            raise ValueError(f"unknown config field(s) {few(unknown)}: minigpt does not know what they change")
        for key, expected in _MUST_EQUAL.items():
            # compared with its type: `"scale_attn_weights": 1` is not the true it stands for
            if key in fields and (type(fields[key]) is not type(expected) or fields[key] != expected):
                raise ValueError(
                    f"config field {key}={repr(fields[key])[:40]} is not supported "
                    f"(minigpt builds GPT-2 with {key}={expected!r})"
                )
        if "n_ctx" in fields:
            check_int("n_ctx", fields["n_ctx"], low=1)
            if "n_positions" in fields and fields["n_ctx"] != fields["n_positions"]:
                raise ValueError(f"n_ctx ({fields['n_ctx']}) and n_positions ({fields['n_positions']!r}) disagree")
        rates = {key: check_float(key, fields[key], 0.0, 1.0, open_high=True)
                 for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop") if key in fields}
        if len(set(rates.values())) > 1:
            raise ValueError(f"minigpt uses one dropout rate, but the config gives different ones: {rates}")
        kwargs = {ours: fields[theirs] for theirs, ours in _USED.items() if theirs in fields and ours != "dropout"}
        if rates:
            kwargs["dropout"] = next(iter(rates.values()))
        if "n_positions" not in fields and "n_ctx" in fields:
            kwargs["n_positions"] = fields["n_ctx"]
        return cls(**kwargs, **components)

    def to_hf_dict(self, eos_token_id: int | None = None) -> dict[str, Any]:
        """The config.json that transformers and the hub expect for these weights. eos_token_id:
        the checkpoint's end-of-text token (default: GPT-2's, when the vocabulary has it)."""
        fields = {theirs: getattr(self, ours) for theirs, ours in _USED.items() if ours != "dropout"}
        fields |= {"resid_pdrop": self.dropout, "embd_pdrop": self.dropout, "attn_pdrop": self.dropout}
        fields |= _MUST_EQUAL
        fields |= {"architectures": ["GPT2LMHeadModel"], "n_ctx": self.n_positions}
        if eos_token_id is None and self.vocab_size > END_OF_TEXT_ID:  # GPT-2's <|endoftext|> starts and ends its documents
            eos_token_id = END_OF_TEXT_ID
        if eos_token_id is not None:
            fields |= {"bos_token_id": check_int("eos_token_id", eos_token_id, 0, self.vocab_size - 1),
                       "eos_token_id": eos_token_id}
        if self.components:  # not a GPT-2: transformers must not load it as one
            fields |= {"model_type": VARIANT_TYPE, "architectures": ["MiniGPT"], "minigpt_components": self.components}
        return fields


def _components_of(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json's keys without the variant's marks, and the components it swaps in (none for a GPT-2)."""
    if fields.get("model_type") != VARIANT_TYPE:
        if "minigpt_components" in fields:
            raise ValueError(f"minigpt_components is only read with model_type {VARIANT_TYPE!r}, "
                             f"not {fields.get('model_type')!r}")
        return fields, {}
    components = fields.get("minigpt_components")
    if not isinstance(components, dict) or not components:
        raise ValueError(f"model_type {VARIANT_TYPE!r} needs minigpt_components: a non-empty object naming the swaps")
    unknown = sorted(set(components) - set(COMPONENT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown component(s) {few(unknown)} in minigpt_components; known: {', '.join(COMPONENT_DEFAULTS)}")
    rest = {k: v for k, v in fields.items() if k not in ("model_type", "minigpt_components", "architectures")}
    return rest, components


# config.json key -> GPTConfig field
_USED = {
    "n_layer": "n_layer",
    "n_head": "n_head",
    "n_embd": "n_embd",
    "n_inner": "n_inner",
    "vocab_size": "vocab_size",
    "n_positions": "n_positions",
    "layer_norm_epsilon": "layer_norm_epsilon",
    "resid_pdrop": "dropout",
    "embd_pdrop": "dropout",
    "attn_pdrop": "dropout",
}
# Keys that select a variant of the architecture; only GPT-2's own value is built here.
_MUST_EQUAL = {
    "model_type": "gpt2",
    "activation_function": "gelu_new",
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
    "is_encoder_decoder": False,
}
# Keys that do not change the language model's logits: the classification and summary heads of
# other GPT-2 classes, generation defaults, initialisation, and transformers' bookkeeping.
# reorder_and_upcast_attn only changes how mixed-precision training rounds; our attention always
# takes its softmax in float32.
_IGNORED = {
    "n_ctx", "reorder_and_upcast_attn",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout", "task_specific_params", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "architectures", "_name_or_path", "_num_labels", "id2label", "label2id", "problem_type",
    "transformers_version", "torch_dtype", "dtype", "use_cache", "output_past", "is_decoder",
    "gradient_checkpointing", "torchscript", "return_dict", "output_attentions",
    "output_hidden_states", "chunk_size_feed_forward", "tokenizer_class", "prefix",
    "do_sample", "max_length", "min_length", "num_beams", "temperature", "top_k", "top_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "early_stopping",
    "tf_legacy_loss", "use_bfloat16", "pruned_heads", "finetuning_task",
}

PRESETS = {
    "gpt2": GPTConfig(),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
    "distilgpt2": GPTConfig(n_layer=6, n_head=12, n_embd=768),
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=101, n_positions=64),
}
