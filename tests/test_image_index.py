"""realign_jax.pairs.image_index: vision-tower embeddings and the ScaNN neighbour index."""

from __future__ import annotations

import dataclasses

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import build_hf_llava

from realign_jax.data import images as image_ops
from realign_jax.models import hf
from realign_jax.models.partitioning import make_mesh
from realign_jax.pairs.image_index import (
    ImageEmbedder,
    ImageIndex,
    exact_search,
    recall_at_k,
    search_params,
)
from realign_jax.synthetic.config import WorldConfig
from realign_jax.synthetic.world import generate_world


def unit_rows(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around random centres: structured like image embeddings, unlike uniform noise
    (in which no partition of 32-d space finds neighbours, whatever the index)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return unit_rows(centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim)))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """13 synthetic-world images (a ragged last batch for any power-of-two batch size)."""
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(seed=5, num_train_images=13, num_eval_images=1), out, progress=False)
    folder = out / "train" / "images"
    return sorted(str(folder / name) for name in os.listdir(folder))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("hf_llava"))
    build_hf_llava(path, "llama_gqa")
    return path


@pytest.fixture(scope="module")
def single_device(checkpoint) -> ImageEmbedder:
    return ImageEmbedder.from_checkpoint(checkpoint, mesh=make_mesh(data=1, devices=jax.devices()[:1]), batch_size=16)


def test_embeddings_are_unit_vectors_equal_to_an_unjitted_reference(checkpoint, images, single_device):
    model = hf.load_pretrained(checkpoint)
    spec = image_ops.ImageProcessing.for_checkpoint(checkpoint, model.config.vision.image_size)
    pixels = image_ops.preprocess_batch([image_ops.load_image(p) for p in images[:4]], spec)
    pooled = np.asarray(model.vision_features(jnp.asarray(pixels))).mean(axis=1)
    reference = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    embeddings = single_device.embed_images(images[:4], progress=False)
    assert embeddings.dtype == np.float32 and embeddings.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embeddings, reference, atol=1e-5)
    from_bytes = single_device.embed_images([open(p, "rb").read() for p in images[:4]], progress=False)
    np.testing.assert_array_equal(from_bytes, embeddings)  # records may carry encoded images
    assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-2  # different images, different vectors


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2)])
def test_sharded_embedding_equals_single_device(checkpoint, images, single_device, mesh_shape):
    """13 images in batches of 8: the ragged last batch is padded to the batch shards and cut back."""
    sharded = ImageEmbedder.from_checkpoint(checkpoint, mesh=make_mesh(*mesh_shape), batch_size=8)
    assert sharded.mesh.devices.size == jax.device_count() == 8
    together = single_device.embed_images(images, progress=False)
    np.testing.assert_allclose(sharded.embed_images(images, progress=False), together, atol=1e-6)
    assert sharded.embed_images([], progress=False).shape == (0, 32)


def test_scann_brute_force_equals_exact_search():
    vectors = unit_rows(np.random.default_rng(0).normal(size=(500, 16)))
    index = ImageIndex.build([f"img{i}" for i in range(500)], vectors, whiten=False)
    assert not index.params.tree  # small indexes are searched exhaustively
    positions, similarities = index.search(vectors[:50], 10)
    exact_positions, exact_similarities = exact_search(vectors, vectors[:50], 10)
    np.testing.assert_array_equal(positions, exact_positions)
    np.testing.assert_allclose(similarities, exact_similarities, atol=1e-5)
    assert (positions[:, 0] == np.arange(50)).all()  # a raw search finds the query itself first

    neighbours = index.neighbours_batch(list(range(50)), k=10)
    expected = exact_search(vectors, vectors[:50], 11)[0][:, 1:]  # the exact top-11 less the query
    assert [[n.position for n in row] for row in neighbours] == expected.tolist()


def test_tree_ah_configuration_keeps_recall():
    vectors = clustered(3000, 32, clusters=60, seed=1)
    params = search_params(len(vectors), brute_force_below=0)
    assert params.tree and params.num_leaves == 55 and 1 <= params.num_leaves_to_search < params.num_leaves
    keys = [f"img{i}" for i in range(len(vectors))]
    recall = recall_at_k(ImageIndex.build(keys, vectors, params), vectors, k=10)
    one_leaf = dataclasses.replace(params, num_leaves_to_search=1, target_recall=0.0)  # not calibrated
    # ScaNN's k-means is not seeded: recall over repeated builds measured 0.92-0.99 here, so
    # the bound is loose; searching one leaf instead gives ~0.6. The 0.95 of the issue is
    # checked on real embeddings by benchmarks/image_index.py (0.988 on the world).
    assert recall >= 0.90
    assert recall > recall_at_k(ImageIndex.build(keys, vectors, one_leaf), vectors, k=10) + 0.15


def test_tree_visits_more_leaves_until_its_recall_target_on_isotropic_vectors():
    """Whitened embeddings have no clusters for the tree to follow, so a tenth of the leaves
    finds too few true neighbours; the build calibrates the leaves visited on its own images."""
    vectors = unit_rows(np.random.default_rng(5).normal(size=(3000, 32)))
    keys = [f"img{i}" for i in range(len(vectors))]
    params = search_params(len(vectors), brute_force_below=0)
    fixed = ImageIndex.build(keys, vectors, dataclasses.replace(params, target_recall=0.0), whiten=False)
    calibrated = ImageIndex.build(keys, vectors, params, whiten=False)
    assert calibrated.params.num_leaves_to_search > params.num_leaves_to_search
    fresh = unit_rows(np.random.default_rng(6).normal(size=(500, 32)))  # queries it was not calibrated on
    before, after = recall_at_k(fixed, fresh), recall_at_k(calibrated, fresh)
    print(f"\nisotropic recall@10: {params.num_leaves_to_search} leaves {before:.3f}, "
          f"{calibrated.params.num_leaves_to_search} leaves {after:.3f} (of {params.num_leaves})")
    assert before < 0.9 and after >= 0.93


def test_query_image_and_its_duplicates_are_excluded(images, single_device, tmp_path):
    duplicate = str(tmp_path / "copy_of_first.png")
    shutil.copy(images[0], duplicate)
    paths = [*images, duplicate]
    raw = single_device.embed_images(paths, progress=False)
    index = ImageIndex.build(paths, raw)
    ranked = exact_search(index.embeddings, index.embeddings[:1], len(paths))[0][0]
    assert set(ranked[:2].tolist()) == {0, len(paths) - 1}  # the copy is as similar as the image itself

    # A ceiling just under 1 leaves distinct images of this random tower, removes only the copy.
    expected = [p for p in ranked.tolist() if p not in (0, len(paths) - 1)][:5]
    for query in (images[0], 0, duplicate, raw[0]):
        found = index.neighbours(query, k=5, ceiling=0.9999)
        assert [n.position for n in found] == expected, query if isinstance(query, str) else type(query)
        assert all(n.similarity <= 0.9999 and n.key == paths[n.position] for n in found)


def test_whitening_discounts_a_loud_nuisance_direction():
    """Tower features vary most along directions that say little about the objects (colour,
    background). Here image i and its twin 200 + i share their content (16 dimensions) but not a
    loud nuisance dimension: raw cosines rank by the nuisance, whitened ones find the twin."""
    rng = np.random.default_rng(4)
    content = rng.normal(size=(200, 16))
    def with_nuisance(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x, 10.0 * rng.normal(size=(len(x), 1))], axis=1)
    raw = unit_rows(np.concatenate([with_nuisance(content), with_nuisance(content + 0.3 * rng.normal(size=(200, 16)))]))
    keys = [f"img{i}" for i in range(400)]
    whitened, plain = ImageIndex.build(keys, raw), ImageIndex.build(keys, raw, whiten=False)

    def twin_rate(index: ImageIndex) -> float:
        found = [row[0].position for row in index.neighbours_batch(list(range(200)), k=1, ceiling=1.0)]
        return float(np.mean(np.asarray(found) == np.arange(200, 400)))

    print(f"\ntwin found first: whitened {twin_rate(whitened):.2f}, raw {twin_rate(plain):.2f}")
    assert twin_rate(whitened) > 0.7 and twin_rate(plain) < twin_rate(whitened) - 0.3
    covariance = np.cov(whitened.embeddings.T)  # close to a multiple of the identity
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 0.2 * np.diag(covariance).mean()
    # A query given as a raw embedding is whitened like the indexed ones: image 0 itself comes
    # first (a cosine of 1 up to rounding, so the ceiling is above 1 here), then the neighbours a query by position finds.
    by_vector = [n.position for n in whitened.neighbours(raw[0], k=3, ceiling=1.01)]
    assert by_vector == [0, *[n.position for n in whitened.neighbours(0, k=2, ceiling=1.0)]]


def test_a_cluster_of_near_duplicates_is_skipped_by_fetching_more():
    rng = np.random.default_rng(2)
    base = unit_rows(rng.normal(size=(100, 16)))
    near_copies = unit_rows(base[:1] + 0.01 * rng.normal(size=(30, 16)))  # similarity > 0.99 to image 0
    vectors = np.concatenate([base, near_copies])
    index = ImageIndex.build([f"img{i}" for i in range(len(vectors))], vectors, whiten=False)
    found = index.neighbours(0, k=5)  # 2k + 1 = 11 candidates at first: all near-copies or itself
    similarities = vectors @ vectors[0]
    expected = [p for p in np.argsort(-similarities).tolist() if similarities[p] <= 0.98][:5]
    assert [n.position for n in found] == expected and all(p < 100 for p in expected)
    assert len(index.neighbours(0, k=200)) == 99  # only the distinct images remain to give


def test_save_load_round_trip_gives_identical_neighbours(tmp_path):
    vectors = clustered(1500, 32, clusters=30, seed=3)
    keys = [f"images/{i:06d}.png" for i in range(len(vectors))]
    index = ImageIndex.build(keys, vectors, search_params(len(vectors), brute_force_below=0))
    index.save(str(tmp_path / "index"))
    os.rename(tmp_path / "index", tmp_path / "moved")  # the saved paths are relative to the folder
    loaded = ImageIndex.load(str(tmp_path / "moved"))
    assert loaded.keys == keys and loaded.params == index.params
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    np.testing.assert_array_equal(loaded.whitening.projection, index.whitening.projection)
    np.testing.assert_array_equal(loaded.prepare(vectors[:3]), index.prepare(vectors[:3]))
    queries = list(range(0, len(vectors), 7))
    assert loaded.neighbours_batch(queries) == index.neighbours_batch(queries)

    meta = json.loads((tmp_path / "moved" / "index.json").read_text())
    meta["keys"] = keys[:-1]
    (tmp_path / "moved" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="moved: 1499 keys but embeddings of shape"):
        ImageIndex.load(str(tmp_path / "moved"))


def test_unreadable_image_error_names_the_file(images, single_device, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(open(images[0], "rb").read()[:60])  # a truncated PNG
    with pytest.raises(ValueError, match="corrupt.png: not a readable image"):
        single_device.embed_images([images[0], str(corrupt)], progress=False)
    with pytest.raises(ValueError, match="absent.png: image file not found"):
        single_device.embed_images([str(tmp_path / "absent.png")], progress=False)
