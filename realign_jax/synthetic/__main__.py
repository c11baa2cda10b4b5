"""`python -m realign_jax.synthetic OUT_DIR [--seed N] [--train N] [--eval N] [--image-size N] [--overwrite]`:
writes a synthetic world and prints its paths and counts."""

from __future__ import annotations

import argparse
import dataclasses
import json

from realign_jax.synthetic.config import WorldConfig
from realign_jax.synthetic.world import generate_world


def main(argv: list[str] | None = None) -> None:
    defaults = WorldConfig()
    parser = argparse.ArgumentParser(prog="python -m realign_jax.synthetic", description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train", type=int, default=defaults.num_train_images, help="train images")
    parser.add_argument("--eval", type=int, default=defaults.num_eval_images, help="eval images")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--vocab-size", type=int, default=defaults.tokenizer_vocab_size)
    parser.add_argument("--overwrite", action="store_true", help="replace a world already in out_dir")
    args = parser.parse_args(argv)
    config = dataclasses.replace(defaults, seed=args.seed, num_train_images=args.train, num_eval_images=args.eval,
                                 image_size=args.image_size, tokenizer_vocab_size=args.vocab_size)
    result = generate_world(config, args.out_dir, overwrite=args.overwrite)
    summary = {k: result[k] for k in ("out_dir", "world", "tokenizer", "tokenizer_info", "train", "eval")}
    print(json.dumps(summary, indent=1))
    print(f"done in {result['seconds']:.1f}s")


if __name__ == "__main__":
    main()
