"""Embed a synthetic world's train images with a VLM's vision tower and index them with ScaNN,
once with the automatic parameters and once with the tree + asymmetric hashing forced (both
over whitened embeddings, the index's default); print the cost and the recall@10 of each
against exact search.

    python benchmarks/image_index.py [--world DIR] [--train 6000] [--checkpoint PATH]
                                     [--batch_size 256] [--queries 1000] [--ceiling 0.98]

Without --world a world of --train images is generated in a temporary folder (~12 s for
6000). Without --checkpoint the tower is a randomly initialised `world`-preset model, whose
embeddings are far more alike than a trained CLIP's: the similarity line shows how much of
each image's neighbourhood a given near-duplicate ceiling would remove.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
from flax import nnx

from realign_jax.data.images import ImageProcessing
from realign_jax.models.config import preset
from realign_jax.models.llava import LlavaModel
from realign_jax.pairs.image_index import (
    ImageEmbedder,
    ImageIndex,
    Whitening,
    exact_search,
    recall_at_k,
    search_params,
)
from realign_jax.synthetic.config import WorldConfig
from realign_jax.synthetic.world import generate_world


def embedder(checkpoint: str | None, batch_size: int) -> ImageEmbedder:
    if checkpoint:
        return ImageEmbedder.from_checkpoint(checkpoint, batch_size=batch_size)
    config = preset("world")
    size = config.vision.image_size
    return ImageEmbedder(LlavaModel(config, rngs=nnx.Rngs(0)), ImageProcessing(size=size, shortest_edge=size),
                         batch_size=batch_size)


def report(name: str, index_of: Callable[[], ImageIndex], queries: np.ndarray) -> None:
    """Build time, ScaNN time per 1000 queries (top 10) and recall@10 for one configuration."""
    start = time.perf_counter()
    index = index_of()
    built = time.perf_counter() - start
    index.search(queries[:10], 10)  # warm-up
    start = time.perf_counter()
    index.search(queries, 10)
    per_thousand = (time.perf_counter() - start) * 1000 / len(queries)
    print(f"{name:<10} {dataclasses.asdict(index.params)}\n"
          f"{'':<10} build {built:.3f} s, query {per_thousand * 1000:.1f} ms per 1000 queries, "
          f"recall@10 vs exact {recall_at_k(index, queries, 10):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", help="an existing synthetic world folder")
    parser.add_argument("--train", type=int, default=6000, help="train images of a generated world")
    parser.add_argument("--checkpoint", help="a Hugging Face LLaVA folder; default: random `world` preset")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ceiling", type=float, default=0.98)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        world = args.world
        if world is None:
            world = scratch
            generate_world(WorldConfig(num_train_images=args.train, num_eval_images=1), world, progress=False)
        folder = os.path.join(world, "train", "images")
        paths = sorted(os.path.join(folder, name) for name in os.listdir(folder))
        tower = embedder(args.checkpoint, args.batch_size)
        start = time.perf_counter()
        embeddings = tower.embed_images(paths)
        embed_seconds = time.perf_counter() - start

    n = len(paths)
    print(f"{n} images, {embeddings.shape[1]}-d embeddings; embed {embed_seconds:.2f} s "
          f"({n / embed_seconds:.0f} images/s, compile included) on {tower.mesh.devices.size} device(s)")
    queries = embeddings[np.random.default_rng(0).choice(n, min(args.queries, n), replace=False)]
    start = time.perf_counter()
    similarities = exact_search(embeddings, queries, 2)[1][:, 1]  # [:, 0] is the query itself
    print(f"exact numpy search {(time.perf_counter() - start) * 1e6 / len(queries):.1f} ms per 1000 queries")
    whitening = Whitening.fit(embeddings)
    whitened = exact_search(whitening(embeddings), whitening(queries), 2)[1][:, 1]
    for name, values in (("raw", similarities), ("whitened (the index's default)", whitened)):
        print(f"nearest other image's similarity, {name}: median {np.median(values):.4f}, "
              f"{np.mean(values > args.ceiling):.1%} above the ceiling {args.ceiling}")
    report("automatic", lambda: ImageIndex.build(paths, embeddings), queries)
    report("tree+AH", lambda: ImageIndex.build(paths, embeddings, search_params(n, brute_force_below=0)), queries)


if __name__ == "__main__":
    main()
