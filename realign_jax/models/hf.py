"""Hugging Face `LlavaForConditionalGeneration` folders <-> `LlavaModel`.

Loading reads config.json through transformers' config classes (so defaults a config
omits are HF's own) and tensors lazily from safetensors shards with numpy: no torch, and
with a mesh every device receives only its slice, read straight from the file, so the
whole model is never copied on one host. Saving writes the llava-hf layout that
transformers, vLLM, lmms-eval and VLMEvalKit read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from realign_jax.models.config import LlavaConfig, TextConfig, VisionConfig
from realign_jax.models.llava import LlavaModel, abstract_model
from realign_jax.models.partitioning import DEFAULT_RULES, Rules, state_shardings
from realign_jax.models.processor_files import PREPROCESSOR_CONFIG, ImageProcessingFields, write_processor_files

log = logging.getLogger(__name__)

SUPPORTED_TEXT_MODELS = ("llama", "mistral", "qwen2")
# Files that travel with the weights so an exported folder is usable on its own.
SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "chat_template.json", "chat_template.jinja", "preprocessor_config.json", "processor_config.json",
    "generation_config.json",
)

# (regex over our parameter path, HF name template, number of input dims for kernels).
# `{i}` is the layer index of stacked parameters, `{0}` the first regex group, `{w}` the
# HF leaf name (weight or bias).
_V = "vision_tower.vision_model."
_T = "language_model.model."
_RULES: tuple[tuple[str, str, int], ...] = (
    (r"vision_tower\.patch_embedding", _V + "embeddings.patch_embedding.weight", 0),
    (r"vision_tower\.class_embedding", _V + "embeddings.class_embedding", 0),
    (r"vision_tower\.position_embedding", _V + "embeddings.position_embedding.weight", 0),
    (r"vision_tower\.pre_layernorm\.(?:scale|bias)", _V + "pre_layrnorm.{w}", 0),
    (r"vision_tower\.post_layernorm\.(?:scale|bias)", _V + "post_layernorm.{w}", 0),
    (r"vision_tower\.layers\.(layer_norm[12])\.(?:scale|bias)", _V + "encoder.layers.{i}.{0}.{w}", 0),
    (r"vision_tower\.layers\.([qkv]_proj)\.(?:kernel|bias)", _V + "encoder.layers.{i}.self_attn.{0}.{w}", 1),
    (r"vision_tower\.layers\.(out_proj)\.(?:kernel|bias)", _V + "encoder.layers.{i}.self_attn.{0}.{w}", 2),
    (r"vision_tower\.layers\.(fc[12])\.(?:kernel|bias)", _V + "encoder.layers.{i}.mlp.{0}.{w}", 1),
    (r"projector\.(linear_[12])\.(?:kernel|bias)", "multi_modal_projector.{0}.{w}", 1),
    (r"decoder\.embed_tokens\.embedding", _T + "embed_tokens.weight", 0),
    (r"decoder\.layers\.(input_layernorm|post_attention_layernorm)\.scale", _T + "layers.{i}.{0}.weight", 0),
    (r"decoder\.layers\.([qkv]_proj)\.(?:kernel|bias)", _T + "layers.{i}.self_attn.{0}.{w}", 1),
    (r"decoder\.layers\.(o_proj)\.(?:kernel|bias)", _T + "layers.{i}.self_attn.{0}.{w}", 2),
    (r"decoder\.layers\.(gate_proj|up_proj|down_proj)\.(?:kernel|bias)", _T + "layers.{i}.mlp.{0}.{w}", 1),
    (r"decoder\.norm\.scale", _T + "norm.weight", 0),
    (r"decoder\.lm_head\.kernel", "language_model.lm_head.weight", 1),
)
# Checkpoint key prefixes of other transformers versions -> the llava-hf layout above.
_KEY_ALIASES: tuple[tuple[str, str], ...] = (
    (r"^model\.language_model\.", "language_model.model."),
    (r"^model\.vision_tower\.", "vision_tower."),
    (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^vision_tower\.(?!vision_model\.)", "vision_tower.vision_model."),
)
# Buffers some checkpoints carry that hold no parameter.
_IGNORED_KEYS = re.compile(r"rotary_emb\.inv_freq$|position_ids$")


class _Param:
    """How one parameter of ours maps to HF tensors."""

    def __init__(self, path: str, shape: tuple[int, ...]):
        for pattern, template, n_in in _RULES:
            match = re.fullmatch(pattern, path)
            if match:
                break
        else:
            raise KeyError(f"no Hugging Face name for parameter {path}")
        leaf = "bias" if path.endswith(".bias") else "weight"
        self.template = template.replace("{w}", leaf)
        self.groups = match.groups()
        self.stacked = ".layers." in path
        self.shape = shape
        self.layer_shape = shape[1:] if self.stacked else shape
        self.n_in = n_in if leaf == "weight" else 0
        self.is_patch = path.endswith("patch_embedding")

    def hf_name(self, layer: int | None = None) -> str:
        return self.template.format(*self.groups, i=layer)

    def hf_names(self) -> list[str]:
        return [self.hf_name(i) for i in range(self.shape[0])] if self.stacked else [self.hf_name()]

    def from_hf(self, tensor: np.ndarray) -> np.ndarray:
        """HF tensor (torch layout) -> our layout for one layer."""
        if self.is_patch or self.n_in:
            # linear [out, in] -> [*in_dims, *out_dims]; conv [embed, C, p, p] -> [C*p*p, embed]
            return tensor.reshape(tensor.shape[0], -1).T.reshape(self.layer_shape)
        return tensor.reshape(self.layer_shape)

    def to_hf(self, array: np.ndarray, hf_shape: tuple[int, ...]) -> np.ndarray:
        """Our layout for one layer -> HF tensor of `hf_shape`, C-contiguous (safetensors writes
        the raw buffer, so a transposed view would be saved scrambled)."""
        if self.is_patch:
            array = array.T
        elif self.n_in:
            array = array.reshape(math.prod(array.shape[: self.n_in]), -1).T
        return np.ascontiguousarray(array.reshape(hf_shape))


def _hf_shape(param: _Param, config: LlavaConfig) -> tuple[int, ...]:
    """The torch-layout shape HF stores for one layer of `param`."""
    if param.is_patch:
        v = config.vision
        return (v.hidden_size, v.num_channels, v.patch_size, v.patch_size)
    if param.n_in:
        shape = param.layer_shape
        return (math.prod(shape[param.n_in :]), math.prod(shape[: param.n_in]))
    if param.template.endswith(".bias"):
        return (math.prod(param.layer_shape),)
    return param.layer_shape


def _flat_variables(model_or_state: Any) -> Iterator[tuple[str, nnx.Variable]]:
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
    for path, variable in nnx.to_flat_state(state):
        yield ".".join(str(p) for p in path), variable


# --- config ------------------------------------------------------------------------------

def config_from_hf(path: str, **runtime: Any) -> LlavaConfig:
    """Read a checkpoint folder's config.json into a LlavaConfig (run-time switches by keyword)."""
    from transformers import AutoConfig  # transformers is only needed for configs, not weights

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: no config.json; expected a Hugging Face LlavaForConditionalGeneration folder")
    hf = AutoConfig.from_pretrained(path, local_files_only=True)
    if hf.model_type != "llava":
        raise ValueError(f"{path}/config.json: model_type={hf.model_type!r}, expected 'llava'")
    t, v = hf.text_config, hf.vision_config
    if t.model_type not in SUPPORTED_TEXT_MODELS:
        raise ValueError(f"{path}/config.json: text_config.model_type={t.model_type!r}; supported: {SUPPORTED_TEXT_MODELS}")
    rope = getattr(t, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise NotImplementedError(f"{path}/config.json: rope_type={rope_type!r}; only 'default' RoPE is implemented")
    if v.model_type != "clip_vision_model":
        raise ValueError(f"{path}/config.json: vision_config.model_type={v.model_type!r}, expected 'clip_vision_model'")
    is_llama = t.model_type == "llama"
    attention_bias = bool(getattr(t, "attention_bias", False))
    text = TextConfig(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads,
        num_kv_heads=t.num_key_value_heads or t.num_attention_heads, head_dim=getattr(t, "head_dim", None),
        rms_norm_eps=t.rms_norm_eps, rope_theta=float(rope.get("rope_theta", 10000.0)),
        max_position_embeddings=t.max_position_embeddings,
        qkv_bias=attention_bias if is_llama else t.model_type == "qwen2",
        o_bias=attention_bias if is_llama else False,
        mlp_bias=bool(getattr(t, "mlp_bias", False)),
        tie_word_embeddings=bool(hf.tie_word_embeddings or getattr(t, "tie_word_embeddings", False)),
        hidden_act=t.hidden_act, model_type=t.model_type,
    )
    vision = VisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_layers=v.num_hidden_layers,
        num_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
        num_channels=v.num_channels, layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act,
    )
    layer = hf.vision_feature_layer
    return LlavaConfig(
        vision=vision, text=text, image_token_id=hf.image_token_id,
        vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
        vision_feature_select_strategy=hf.vision_feature_select_strategy,
        projector_hidden_act=hf.projector_hidden_act,
        projector_bias=bool(getattr(hf, "multimodal_projector_bias", True)),
        **runtime,
    )


def config_to_hf(config: LlavaConfig) -> Any:
    """A transformers `LlavaConfig` describing `config`'s architecture."""
    import transformers

    t, v = config.text, config.vision
    text_kwargs: dict[str, Any] = dict(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
        head_dim=t.resolved_head_dim, rms_norm_eps=t.rms_norm_eps, max_position_embeddings=t.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta}, hidden_act=t.hidden_act,
        tie_word_embeddings=t.tie_word_embeddings,
    )
    if t.model_type == "llama":
        if t.qkv_bias != t.o_bias:
            raise ValueError("a llama text config biases q/k/v and o together; qkv_bias and o_bias differ")
        text_config = transformers.LlamaConfig(attention_bias=t.qkv_bias, mlp_bias=t.mlp_bias, **text_kwargs)
    elif t.model_type == "qwen2":
        text_config = transformers.Qwen2Config(**text_kwargs)
    else:
        text_config = transformers.MistralConfig(**text_kwargs)
    vision_config = transformers.CLIPVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size,
        num_channels=v.num_channels, layer_norm_eps=v.layer_norm_eps, hidden_act=v.hidden_act,
    )
    layer = config.vision_feature_layer
    return transformers.LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=config.image_token_id,
        vision_feature_layer=layer if isinstance(layer, int) else list(layer),
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        projector_hidden_act=config.projector_hidden_act, multimodal_projector_bias=config.projector_bias,
        image_seq_length=config.num_image_tokens, tie_word_embeddings=t.tie_word_embeddings,
    )


# --- weights -----------------------------------------------------------------------------

class _CheckpointTensors:
    """Lazy access to every tensor of a (possibly sharded) safetensors checkpoint by llava-hf name."""

    def __init__(self, path: str):
        from safetensors import safe_open

        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.isfile(os.path.join(path, "model.safetensors")):
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(
                f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors are read; "
                "convert .bin checkpoints with transformers first)"
            )
        self._handles = [safe_open(os.path.join(path, name), framework="np") for name in files]
        self._where: dict[str, tuple[Any, str]] = {}
        for handle in self._handles:
            for key in handle.keys():
                self._where[_canonical_key(key)] = (handle, key)

    def names(self) -> set[str]:
        return {k for k in self._where if not _IGNORED_KEYS.search(k)}

    def read(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise KeyError(f"checkpoint has no tensor {name!r}")
        handle, key = self._where[name]
        return handle.get_tensor(key)


def _canonical_key(key: str) -> str:
    for pattern, replacement in _KEY_ALIASES:
        key = re.sub(pattern, replacement, key)
    return key


def load_pretrained(
    path: str, *, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES, **runtime: Any
) -> LlavaModel:
    """Load a local LlavaForConditionalGeneration folder into a (sharded) LlavaModel.

    `runtime` overrides LlavaConfig's run-time fields (param_dtype, dtype, remat, scan_layers).
    """
    config = config_from_hf(path, **runtime)
    graphdef, state = nnx.split(abstract_model(config))
    tensors = _CheckpointTensors(path)
    shardings = state_shardings(state, mesh, rules) if mesh is not None else None
    default = SingleDeviceSharding(jax.devices()[0])
    flat_shardings = dict(_flat_variables(shardings)) if shardings is not None else {}
    used: set[str] = set()
    for name, variable in _flat_variables(state):
        param = _Param(name, tuple(variable.shape))
        used.update(param.hf_names())
        sharding = flat_shardings[name] if name in flat_shardings else default
        variable.set_value(_build_array(param, tensors, variable.dtype, sharding))
    unused = tensors.names() - used
    if unused:
        log.warning("%s: %d checkpoint tensors not used, e.g. %s", path, len(unused), sorted(unused)[:3])
    return nnx.merge(graphdef, state)


def _build_array(param: _Param, tensors: _CheckpointTensors, dtype: Any, sharding: Any) -> jax.Array:
    """Each device's block read from the file on demand; one layer tensor in host memory at a time."""
    cache: dict[int | None, np.ndarray] = {}

    def layer(i: int | None) -> np.ndarray:
        if i not in cache:
            cache.clear()
            name = param.hf_name(i)
            try:
                cache[i] = param.from_hf(tensors.read(name)).astype(dtype)
            except ValueError as e:
                raise ValueError(f"tensor {name}: cannot map to shape {param.layer_shape}: {e}") from e
        return cache[i]

    def block(index: tuple[slice, ...]) -> np.ndarray:
        if not param.stacked:
            return layer(None)[index]
        layers = range(param.shape[0])[index[0]]
        return np.stack([layer(i)[index[1:]] for i in layers])

    return jax.make_array_from_callback(param.shape, sharding, block)


def _save_readable(save_file: Callable[..., None], tensors: dict[str, np.ndarray], path: str,
                   metadata: dict[str, str]) -> None:
    """safetensors writes its files 0600; give them the mode `open` gives config.json (0666 less
    the umask), so whoever may read the export, a serving container say, can read the weights."""
    save_file(tensors, path, metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_pretrained(
    model: LlavaModel, path: str, *, max_shard_bytes: int = 5 * 2**30, dtype: Any = None,
    copy_side_files_from: str | None = None, image_processing: ImageProcessingFields | None = None,
    image_processing_is_the_runs: bool = False,
) -> None:
    """Write `model` as a transformers-loadable LlavaForConditionalGeneration folder.

    Tensors are gathered one layer at a time; only process 0 writes. `dtype` casts on export
    (e.g. 'bfloat16'); by default parameters keep their dtype. `copy_side_files_from` copies
    tokenizer, processor and generation files from the source checkpoint. `image_processing`
    (the data/images.py `ImageProcessing` the model was trained with) writes the processor files
    the source lacks, so `AutoProcessor` loads the export (models/processor_files.py);
    `image_processing_is_the_runs` writes its preprocessor_config.json over the source's (the run
    chose its own padding).
    """
    from safetensors.numpy import save_file

    config = model.config
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, tensor in _hf_tensors(model):
        if dtype is not None:
            tensor = tensor.astype(dtype)
        if size and size + tensor.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    if jax.process_index() != 0:
        return
    os.makedirs(path, exist_ok=True)
    config_to_hf(config).save_pretrained(path)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        _save_readable(save_file, shards[0], os.path.join(path, "model.safetensors"), metadata)
    else:
        weight_map: dict[str, str] = {}
        for n, shard in enumerate(shards, start=1):
            filename = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            _save_readable(save_file, shard, os.path.join(path, filename), metadata)
            weight_map.update(dict.fromkeys(shard, filename))
        total = sum(t.nbytes for s in shards for t in s.values())
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    copied = _copy_side_files(copy_side_files_from, path) if copy_side_files_from else []
    if image_processing is not None:
        keep = [name for name in copied if not (image_processing_is_the_runs and name == PREPROCESSOR_CONFIG)]
        write_processor_files(path, config, image_processing, keep=keep)


def _copy_side_files(source_folder: str, path: str) -> list[str]:
    """Copy the SIDE_FILES `source_folder` has into `path`; returns the names copied."""
    copied = []
    for name in SIDE_FILES:
        source = os.path.join(source_folder, name)
        if os.path.isfile(source):
            shutil.copy(source, os.path.join(path, name))
            copied.append(name)
    return copied


def _hf_tensors(model: LlavaModel) -> Iterator[tuple[str, np.ndarray]]:
    """(llava-hf name, host numpy tensor) for every parameter, layer by layer."""
    gather: Callable[[jax.Array], np.ndarray]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))  # noqa: E731
    else:
        gather = lambda x: np.asarray(jax.device_get(x))  # noqa: E731
    for name, variable in _flat_variables(model):
        param = _Param(name, tuple(variable.shape))
        hf_shape = _hf_shape(param, model.config)
        if param.stacked:
            for i in range(param.shape[0]):
                yield param.hf_name(i), param.to_hf(gather(variable[i]), hf_shape)
        else:
            yield param.hf_name(), param.to_hf(gather(variable[...]), hf_shape)
