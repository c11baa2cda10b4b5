"""Caption images with a LLaVA checkpoint: the generation runner behind `mode=generate`.

It loads a Hugging Face LLaVA folder, preprocesses images as the checkpoint's processor
would, builds the prompt with its chat template, generates with the KV cache in batches and
writes one JSON line per image. Without a checkpoint path it writes a tiny random LLaVA in
HF format into the work dir and captions a drawn image: the text is noise, but every step
(export, import, preprocessing, cached generation) runs for real.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx
from PIL import Image, ImageDraw
from tqdm import tqdm

from realign_jax.data import images as image_ops
from realign_jax.data import prompting
from realign_jax.models import hf
from realign_jax.models.config import preset
from realign_jax.models.generation import SamplingConfig, decode, generate
from realign_jax.models.llava import LlavaModel


def prepare_checkpoint(model_config: Any, workdir: str) -> str:
    """The checkpoint folder to use: the user's, or a tiny random one written once in `workdir`."""
    if model_config.path:
        return model_config.path
    path = os.path.join(workdir, f"random_{model_config.preset}_llava")
    if not os.path.isfile(os.path.join(path, "config.json")):
        model = LlavaModel(preset(model_config.preset), rngs=nnx.Rngs(model_config.seed))
        hf.save_pretrained(model, path)
    return path


def demo_image(size: int = 96) -> Image.Image:
    """A drawn scene (sky, ground, sun, a house) standing in for a photograph."""
    image = Image.new("RGB", (size, size), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, size * 2 // 3, size, size], fill=(90, 160, 70))
    draw.ellipse([size // 10, size // 10, size // 3, size // 3], fill=(250, 210, 60))
    draw.rectangle([size // 2, size // 2, size * 5 // 6, size * 3 // 4], fill=(170, 60, 50))
    return image


def _prompt_ids(path: str, model: LlavaModel, prompt: str) -> tuple[list[int], Any]:
    """Prompt ids with the image expanded; BOS + image tokens when the folder has no tokenizer."""
    if not os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        return [1] + [model.config.image_token_id] * model.config.num_image_tokens, None
    tokenizer = prompting.load_tokenizer(path)
    return prompting.image_prompt_ids(tokenizer, prompt, model.config.num_image_tokens), tokenizer


def caption(config: Any, workdir: str) -> list[dict[str, Any]]:
    """Run `config.generate` over `config.data.images`; write `<workdir>/generations.jsonl`."""
    os.makedirs(workdir, exist_ok=True)
    path = prepare_checkpoint(config.model, workdir)
    model = hf.load_pretrained(path, dtype=config.model.dtype, param_dtype=config.model.param_dtype)
    processing = image_ops.ImageProcessing.for_checkpoint(path, model.config.vision.image_size)
    sources: Sequence[str] = [s for s in config.data.images.split(",") if s] if config.data.images else []
    prompt_ids, tokenizer = _prompt_ids(path, model, config.generate.prompt)
    eos = tokenizer.eos_token_id if tokenizer is not None else 2
    sampling = SamplingConfig(
        max_new_tokens=config.generate.max_new_tokens, temperature=config.generate.temperature,
        top_p=config.generate.top_p, eos_token_ids=(eos,),
        pad_token_id=tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0,
    )
    names = list(sources) or ["<demo image>"]
    results: list[dict[str, Any]] = []
    out_path = os.path.join(workdir, "generations.jsonl")
    batch_size = config.generate.batch_size
    # Written beside the output and renamed when complete: a run that stops on a bad image keeps
    # the previous run's generations.jsonl instead of leaving it truncated.
    partial = out_path + ".partial"
    with open(partial, "w") as out, tqdm(total=len(names), desc="captioning", unit="img") as bar:
        for start in range(0, len(names), batch_size):
            chunk = names[start : start + batch_size]
            pictures = [image_ops.load_image(s) for s in chunk] if sources else [demo_image()]
            pixels = image_ops.preprocess_batch(pictures, processing)
            ids = np.tile(np.asarray(prompt_ids, np.int32), (len(chunk), 1))
            began = time.perf_counter()
            output = generate(model, ids, sampling, pixel_values=pixels)
            tokens, lengths = np.asarray(output.tokens), np.asarray(output.lengths)
            seconds = time.perf_counter() - began
            texts = decode(tokens, lengths, tokenizer) if tokenizer is not None else [None] * len(chunk)
            for name, row, n, text in zip(chunk, tokens, lengths, texts):
                record = {"image": name, "text": text, "token_ids": row[: int(n)].tolist(),
                          "tokens_per_sec": float(lengths.sum() / seconds)}
                out.write(json.dumps(record) + "\n")
                results.append(record)
            bar.update(len(chunk))
    os.replace(partial, out_path)
    print(f"checkpoint: {path}\noutputs:    {out_path}")
    for record in results:
        shown = record["text"] if record["text"] is not None else f"token ids {record['token_ids']}"
        print(f"  {record['image']}: {shown}")
    return results
