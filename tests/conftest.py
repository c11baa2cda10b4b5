"""Shared fixtures: 8 fake CPU devices for sharding tests, a JAX compile cache, and tiny
random LLaVA checkpoints written by transformers (the reference implementation)."""

import os

# Must happen before JAX initialises its backends: every test sees 8 CPU devices, so
# sharded and single-device runs can be compared in one process.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

IMAGE_TOKEN_ID = 120

# Tiny reference checkpoints. Each covers parts of the LLaVA family the loader must handle.
HF_VARIANTS = {
    # Llama decoder, grouped-query attention, LLaVA-1.5's feature layer -2, sharded files.
    "llama_gqa": dict(
        text=dict(model_type="llama", num_attention_heads=4, num_key_value_heads=2),
        llava=dict(vision_feature_layer=-2, vision_feature_select_strategy="default"),
        max_shard_size="40KB",
    ),
    # Qwen2 decoder (q/k/v biases), several concatenated feature layers, CLS kept, tied head.
    "qwen2_multilayer": dict(
        text=dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
        llava=dict(vision_feature_layer=[-3, -1], vision_feature_select_strategy="full"),
        max_shard_size="5GB",
    ),
}


def build_hf_llava(path: str, variant: str, seed: int = 0, vocab_size: int = 128, image_token_id: int = IMAGE_TOKEN_ID):
    """Write a tiny random LlavaForConditionalGeneration with transformers; return it (eval mode)."""
    import torch
    import transformers

    spec = HF_VARIANTS[variant]
    text_kwargs = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, vocab_size=vocab_size,
                       max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    text_kwargs.update({k: v for k, v in spec["text"].items() if k != "model_type"})
    text_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[spec["text"]["model_type"]]
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                           num_attention_heads=4, image_size=32, patch_size=8)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text_class(**text_kwargs),
                                      image_token_id=image_token_id,
                                      tie_word_embeddings=text_kwargs.get("tie_word_embeddings", False),
                                      **spec["llava"])
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    # Random init leaves norms at 1 and biases at 0; perturb everything so a mapping slip shows.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path, max_shard_size=spec["max_shard_size"])
    return model


def build_world_llava(world: str, path: str) -> str:
    """A tiny random LLaVA written by transformers at `path`, with a synthetic world's tokenizer
    (256 ids, <image> last) copied in: a checkpoint the world's records can be answered with."""
    import shutil

    build_hf_llava(path, "llama_gqa", vocab_size=256, image_token_id=255)
    tokenizer = os.path.join(world, "tokenizer")
    for name in os.listdir(tokenizer):
        shutil.copy(os.path.join(tokenizer, name), path)
    return path


@pytest.fixture(scope="session", params=sorted(HF_VARIANTS))
def hf_checkpoint(request, tmp_path_factory):
    """(folder, torch model, variant name) for each reference variant."""
    path = str(tmp_path_factory.mktemp(request.param))
    model = build_hf_llava(path, request.param)
    return path, model, request.param


@pytest.fixture(scope="session")
def tokenizer():
    """A small BPE tokenizer with `<image>` and LLaVA-1.5's chat template (see test_prompting)."""
    from test_prompting import LLAVA_TEMPLATE, build_tokenizer

    return build_tokenizer(LLAVA_TEMPLATE)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A synthetic world of 16 train and 2 eval images, shared read-only by the online-sampling
    and annotator tests."""
    from realign_jax.synthetic import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("small_world")
    generate_world(WorldConfig(seed=3, num_train_images=16, num_eval_images=2), out, progress=False)
    return out


@pytest.fixture(scope="session")
def small_world_llava(small_world, tmp_path_factory):
    """`build_world_llava` on `small_world`: a checkpoint its records can be answered with."""
    return build_world_llava(str(small_world), str(tmp_path_factory.mktemp("small_world_llava")))
