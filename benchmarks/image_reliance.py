"""Does a checkpoint read the image? Teacher-forced answer NLL with the right images, with the
images shifted by one record, and with blank (zero) images.

    python benchmarks/image_reliance.py CHECKPOINT RECORDS.jsonl [--records_used 80] [--seq_len 160]

CHECKPOINT is a Hugging Face LLaVA folder with its tokenizer (e.g. the export/ of
configs/sft_world.py); RECORDS is a JSONL of records with `chosen` answers (e.g. a world's
eval/sft.jsonl). A model that uses the image scores clearly lower with the right images; equal
figures mean it answers from the language prior alone.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

from realign_jax.data import images as image_ops
from realign_jax.data import prompting
from realign_jax.data.encode import EncoderConfig, ExampleEncoder
from realign_jax.data.sources import JsonlSource
from realign_jax.models import hf
from realign_jax.train.logprobs import shifted, token_scores


def answer_nll(model, batch: dict[str, np.ndarray], pixels: np.ndarray) -> float:
    """Mean NLL per answer token, scored as the trainer scores rows (train/logprobs.py)."""
    ids = jnp.asarray(batch["input_ids"])
    hidden = model.hidden_states(ids, jnp.asarray(pixels), jnp.asarray(batch["attention_mask"]))
    labels, mask = shifted(ids, jnp.asarray(batch["loss_mask"]))
    scores = token_scores(hidden, model.decoder.output_kernel(), labels)
    return float(-(scores.label * mask).sum() / mask.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("records")
    parser.add_argument("--records_used", type=int, default=80)
    parser.add_argument("--seq_len", type=int, default=160)
    args = parser.parse_args()
    model = hf.load_pretrained(args.checkpoint)
    encoder = ExampleEncoder(
        prompting.load_tokenizer(args.checkpoint),
        image_ops.ImageProcessing.for_checkpoint(args.checkpoint, model.config.vision.image_size),
        EncoderConfig(kinds=("chosen",), num_images=1, seq_len=args.seq_len,
                      num_image_tokens=model.config.num_image_tokens))
    source = JsonlSource(args.records)
    examples = [encoder.encode(source[i], source.where(i)) for i in range(min(args.records_used, len(source)))]
    batch = {k: np.stack([e[k][0] for e in examples]) for k in ("input_ids", "attention_mask", "loss_mask",
                                                                "pixel_values")}
    pixels = batch["pixel_values"]
    right, shifted, blank = (answer_nll(model, batch, p) for p in (pixels, np.roll(pixels, 1, 0),
                                                                    np.zeros_like(pixels)))
    print(f"{len(examples)} records, answer NLL per token: right images {right:.4f}, shifted {shifted:.4f}, "
          f"blank {blank:.4f}; gain from the image {shifted - right:+.4f}")


if __name__ == "__main__":
    main()
