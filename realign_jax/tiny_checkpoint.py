"""A tiny random LLaVA with a real tokenizer, in Hugging Face format, written by one command:

    python -m realign_jax.tiny_checkpoint /tmp/tiny_llava --text examples/own_data/pairs.jsonl examples/own_data/sft.jsonl

A random model of the `tiny` preset alone has no tokenizer, yet the record sources, the pair
builders, generation and evaluation all need one. This folder has everything a real LLaVA
folder has (config.json, safetensors, tokenizer with LLaVA-1.5's chat template, processor
files), so `--config.model.path=/tmp/tiny_llava` runs every mode on your own records in
seconds on a CPU: a dry run of the commands before a real checkpoint takes their place. Its
answers are noise.

The tokenizer is the synthetic world's BPE (synthetic/tokenizer.py: 256 ids, `<image>` last,
as the preset expects), trained on a built-in English sample, every printable ASCII character
(so no text falls to `<unk>`) and the questions and answers of the `--text` JSONL files. The
same arguments write the same files.
"""

from __future__ import annotations

import argparse
import string
from collections.abc import Iterator, Sequence

from flax import nnx

from realign_jax.data.images import ImageProcessing
from realign_jax.data.jsonl import decode
from realign_jax.models import hf
from realign_jax.models.config import preset
from realign_jax.models.llava import LlavaModel
from realign_jax.synthetic.tokenizer import conversation_text, save_tokenizer, train_tokenizer

PRESET = "tiny"
QUESTION_FIELDS = ("question", "prompt", "text")  # `text`: a POPE question file's
ANSWER_FIELDS = ("chosen", "rejected")
# Plain English of the kind image questions and captions use, so common words get merges.
ENGLISH = """\
Describe the image. What is in the picture? Is there a dog in the image? Yes, there is. No, there is not.
What colour is the cat? The cat is black and white. How many people are there? There are two people.
A man is standing next to a woman on the street. A small child is playing with a ball in the park.
There is a table with a cup, a plate and a bottle on it. A red car is parked in front of the building.
The sky is blue and the sun is shining. A green tree stands on the grass near the house.
Two birds are flying over the water. A large white boat is on the left of the picture.
The photo shows a kitchen with a sink, a window and some chairs. Where is the bicycle? It is on the right.
What is the person holding? The person is holding an umbrella. The room has a bed, a lamp and a picture.
"""


def record_texts(paths: Sequence[str]) -> Iterator[str]:
    """Each record's question with each of its answers, as the chat template renders them. A line
    that is no JSON object only teaches the tokenizer nothing (`mode=inspect` names bad records)."""
    for path in paths:
        with open(path, "rb") as f:
            for line in f:
                try:
                    record = decode(line)
                except ValueError:
                    continue
                if not isinstance(record, dict):
                    continue
                turns = record.get("messages") if isinstance(record.get("messages"), list) else []
                question = " ".join([str(t.get("content", "")) for t in turns if isinstance(t, dict)]
                                    + [record[k] for k in QUESTION_FIELDS if isinstance(record.get(k), str)])
                answers = [record[k] for k in ANSWER_FIELDS if isinstance(record.get(k), str)]
                yield from (conversation_text(question, answer) for answer in answers or [""])


def write_tiny_checkpoint(out: str, texts: Sequence[str] = (), seed: int = 0) -> str:
    """Write the random `tiny` LLaVA, its tokenizer and processor files to `out`; returns `out`."""
    config = preset(PRESET)
    corpus = [ENGLISH, " ".join(string.ascii_letters + string.digits + string.punctuation),
              *(conversation_text(q, "") for q in ENGLISH.splitlines()), *record_texts(texts)]
    tokenizer = train_tokenizer(corpus, config.text.vocab_size)
    save_tokenizer(tokenizer, out)  # first: the processor files take its chat template
    size = config.vision.image_size
    # Padded to a square as LLaVA-1.5 was trained, so a wide picture is seen whole, not centre-cropped.
    processing = ImageProcessing(size=size, shortest_edge=size, pad_to_square=True)
    hf.save_pretrained(LlavaModel(config, rngs=nnx.Rngs(seed)), out, image_processing=processing)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a random tiny LLaVA with a tokenizer and processor files "
                                     "(Hugging Face format) for dry runs of every mode.")
    parser.add_argument("out", help="the folder to write (created; files there are replaced)")
    parser.add_argument("--text", nargs="*", default=[], help="JSONL records whose questions and answers the "
                        "tokenizer also learns from (shorter rows for your own data)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of the random weights")
    args = parser.parse_args(argv)
    out = write_tiny_checkpoint(args.out, args.text, args.seed)
    print(f"wrote a random {PRESET} LLaVA with a tokenizer to {out}: use it with --config.model.path={out}")


if __name__ == "__main__":
    main()
