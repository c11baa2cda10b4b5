"""BDHS (`pairs.builder=bdhs`): sentences cut and reassembled exactly, yes/no verdicts flipped at
the configured rate, the hidden image really hidden (and at rho_th=0 plain generation), the
similarity filter's rounds, and resumable, settings-pinned shards; on a tiny random LLaVA
written by transformers with a tiny world's tokenizer."""

from __future__ import annotations

import ast
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import build_world_llava

from realign_jax.data import images as image_ops
from realign_jax.data.chat import ChatCodec
from realign_jax.data.prompting import image_prompt_ids
from realign_jax.main import run, train
from realign_jax.models.answering import Answerer
from realign_jax.models.generation import SamplingConfig, decode, generate
from realign_jax.pairs.bdhs import (
    BdhsSampler,
    cut_sentence,
    draw_flip,
    first_sentence,
    guided_segments,
    split_sentences,
)
from realign_jax.pairs.builder_inputs import read_records
from realign_jax.pairs.sentence_embedder import SentenceEmbedder
from realign_jax.settings.sections import BdhsPairs
from realign_jax.synthetic import WorldConfig, generate_world

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import bdhs_pairs  # noqa: E402

WORLD = {"seed": 7, "num_train_images": 30, "num_eval_images": 4}
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(**WORLD), out, progress=False)
    return out


@pytest.fixture(scope="module")
def checkpoint(world: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random LLaVA written by transformers, with the world's tokenizer (256 ids, <image> last)."""
    return build_world_llava(str(world), str(tmp_path_factory.mktemp("hf_llava")))


@pytest.fixture(scope="module")
def answerer(checkpoint: str) -> Answerer:
    return Answerer.load(checkpoint, ChatCodec.load, batch_size=8)


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder.load()


def sampler(answerer: Answerer, embedder: SentenceEmbedder, **settings) -> BdhsSampler:
    return BdhsSampler(answerer, embedder, BdhsPairs(**{"max_new_tokens": NEW_TOKENS, **settings}))


def captions(world: Path, n: int) -> tuple[list[dict], list[str]]:
    records = read_records(str(world / "train" / "captions.jsonl"))[:n]
    return records, [str(world / "train" / r["image"]) for r in records]


def test_sentences_split_and_cut_round_trip() -> None:
    rng = np.random.default_rng(0)
    for text in ("This image contains a cake, a padlock and a candle. The padlock is left of the cake.",
                 "  Yes!  There is a cup (a blue one).\nIt is small?", "No", "One.Two. ", ""):
        sentences = split_sentences(text)
        assert "".join(sentences) == text
        for sentence in sentences:
            kept, tail = cut_sentence(sentence, rng)
            words, kept_words = sentence.split(), kept.split()
            assert sentence.startswith(kept) and sentence.endswith(tail) and not tail.strip()
            assert kept_words == words[:len(kept_words)]
            assert (1 <= len(kept_words) < len(words)) if len(words) > 1 else not kept_words
    assert split_sentences("The cup is red. The bowl is blue.") == ["The cup is red. ", "The bowl is blue."]
    cuts = {cut_sentence("a b c d.", np.random.default_rng(s))[0] for s in range(50)}
    assert cuts == {"a", "a b", "a b c"}  # every word boundary but the last is drawn
    assert first_sentence("and a bowl. The bowl is red.") == "and a bowl."


def test_verdicts_flip_at_the_configured_rate_and_only_verdicts() -> None:
    answers = ["Yes, there is a cup in the image.", "No, there is no tree in the image.", "yes", "No."]
    flips = [draw_flip(a, np.random.default_rng(i), 0.5) for i, a in enumerate(answers * 500)]
    assert 0.45 < np.mean(flips) < 0.55
    for answer, expected in zip(answers, ["No", "Yes", "no", "Yes"]):
        segments = guided_segments(answer, np.random.default_rng(0), flip=True)
        assert [(s.prompt_prefix, s.whole) for s in segments] == [(expected, True)]
    others = ["The hat is blue.", "There is no cup.", "Yesterday a cup stood here.", "Nobody. Yes."]
    assert not any(draw_flip(a, np.random.default_rng(i), 1.0) for i, a in enumerate(others * 50))
    for answer in others:
        segments = guided_segments(answer, np.random.default_rng(0), flip=False)
        assert len(segments) == len(split_sentences(answer)) and not any(s.whole for s in segments)


def test_hidden_image_is_not_seen(world: Path, answerer: Answerer, embedder: SentenceEmbedder) -> None:
    """rho_th=1 hides every image token: other images give the same rejected answers; at
    rho_th=0 they do not (so the comparison can fail). Verdicts flip; captions keep a prefix."""
    records, images = captions(world, 5)
    records += [{"id": "qa-yes", "question": "Is there a cup in the image?", "chosen": "Yes, there is a cup."},
                {"id": "qa-no", "question": "Is there a tree in the image?", "chosen": "No, there is no tree."}]
    images += images[:2]
    swapped = images[3:] + images[:3]
    assert all(a != b for a, b in zip(images, swapped))
    hidden = sampler(answerer, embedder, rho_th=1.0, eps_s=1.01, flip_probability=1.0)
    first = hidden.rejected(records, images, seed=3)
    assert [r.text for r in first] == [r.text for r in hidden.rejected(records, swapped, seed=3)]
    assert [r.flipped for r in first] == [False] * 5 + [True, True]
    assert first[5].text.startswith("No") and first[6].text.startswith("Yes")
    assert all(r.round == 1 and not r.unguided for r in first)
    for record, result in zip(records[:5], first):
        assert result.text.split()[0] == record["chosen"].split()[0] and result.text != record["chosen"]

    seen = sampler(answerer, embedder, rho_th=0.0, eps_s=1.01, flip_probability=1.0)
    assert [r.text for r in seen.rejected(records, images, seed=3)] != \
        [r.text for r in seen.rejected(records, swapped, seed=3)]


def plain_generation(answerer: Answerer, image: str, question: str, prefix: str = "") -> str:
    """What `generate` writes after the prompt, with no `hidden` mask and no padding."""
    tokenizer, spec = answerer.codec.tokenizer, answerer.codec.processing
    ids = image_prompt_ids(tokenizer, question, answerer.model.config.num_image_tokens, prefix)
    sampling = SamplingConfig(max_new_tokens=NEW_TOKENS, eos_token_ids=(tokenizer.eos_token_id,),
                              pad_token_id=answerer.pad_id)
    pixels = image_ops.preprocess(image_ops.load_image(image), spec)[None]
    output = generate(answerer.model, np.asarray([ids], np.int32), sampling, pixel_values=pixels)
    if not prefix:
        return decode(output.tokens, output.lengths, tokenizer)[0].strip()
    # With a prefix: the whole decoded row minus the decoded prompt, so the continuation keeps
    # the space it begins with.
    generated = [int(t) for t in np.asarray(output.tokens)[0, :int(output.lengths[0])]]
    prompt = tokenizer.decode(ids, skip_special_tokens=True)
    whole = tokenizer.decode(ids + generated, skip_special_tokens=True)
    assert whole.startswith(prompt)
    return whole[len(prompt):].rstrip()


def test_rho_zero_is_plain_generation(world: Path, answerer: Answerer, embedder: SentenceEmbedder) -> None:
    """Two-word sentences have one possible cut, so the guided prompts are known exactly."""
    _, images = captions(world, 2)
    question = "Describe the image."
    records = [{"id": "a", "question": question, "chosen": "Two cups. A bowl."},
               {"id": "b", "question": question, "chosen": "Red ball."}]
    guided = sampler(answerer, embedder, rho_th=0.0, eps_s=1.01).rejected(records, images, seed=0)

    def sentence(image: str, before: str, kept: str) -> str:
        return kept + first_sentence(plain_generation(answerer, image, question, before + kept))

    assert [r.text for r in guided] == [
        sentence(images[0], "", "Two") + " " + sentence(images[0], "Two cups. ", "A"),
        sentence(images[1], "", "Red")]
    unguided = sampler(answerer, embedder, rho_th=0.0, rounds=1).rejected(records, images, seed=0)
    assert [r.text for r in unguided] == [plain_generation(answerer, image, question) for image in images]
    assert all(r.unguided and r.round == 1 for r in unguided)


def config_for(world: Path, checkpoint: str, **pairs):
    config = bdhs_pairs.get_config()
    config.world.dir = str(world)
    for key, value in WORLD.items():
        setattr(config.world, key, value)
    config.model.path = checkpoint
    settings = {"max_new_tokens": NEW_TOKENS, "batch_size": 8, "max_records": 8, "shard_size": 3, "eps_s": 1.01, **pairs}
    for key, value in settings.items():
        setattr(config.pairs, key, value)
    return config


def read_pairs(folder: Path) -> list[dict]:
    return [r for path in sorted(folder.glob("pairs-*.jsonl")) for r in read_records(str(path))]


def test_builds_resumes_and_pins_settings(world: Path, checkpoint: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    run(config_for(world, checkpoint), str(tmp_path))
    assert printed_counts(capsys.readouterr().out) == {"accepted_round_1": 8, "flipped_yes_no": 0, "kept": 8,
                                                       "unguided": 0}
    pairs_dir = tmp_path / "pairs"
    shards = sorted(pairs_dir.glob("pairs-*.jsonl"))
    first = read_pairs(pairs_dir)
    assert len(shards) == 3 and len(first) == 8
    for pair in first:
        assert os.path.isfile(pairs_dir / pair["image"]) and "rejected_image" not in pair
        assert pair["provenance"]["builder"] == "bdhs" and pair["provenance"]["round"] == 1
        assert pair["provenance"]["rho_th"] == 0.99 and pair["provenance"]["similarity"] < 1.01

    shards[1].unlink()
    run(config_for(world, checkpoint), str(tmp_path))
    assert "(1 of 3 shards built now" in capsys.readouterr().out
    assert read_pairs(pairs_dir) == first

    with pytest.raises(ValueError, match=r"other settings \(\['rho_th'\] differ\)"):
        run(config_for(world, checkpoint, rho_th=0.5), str(tmp_path))


def printed_counts(out: str) -> dict:
    return ast.literal_eval(out.split("counts: ", 1)[1].splitlines()[0])


def test_unreachable_similarity_runs_every_round(world: Path, checkpoint: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    run(config_for(world, checkpoint, eps_s=-1.01, rounds=3, max_records=4, shard_size=4), str(tmp_path))
    counts = printed_counts(capsys.readouterr().out)
    # Every record went through all rounds; the random model may write nothing (dropped, counted).
    assert counts["accepted_round_3"] == counts["unguided"] == 4 and "accepted_round_1" not in counts
    assert counts["kept"] + counts.get("dropped_empty_rejected", 0) == 4 and counts["kept"] >= 2
    pairs = read_pairs(tmp_path / "pairs")
    assert len(pairs) == counts["kept"]
    assert all(p["provenance"]["unguided"] and p["provenance"]["round"] == 3 for p in pairs)


def test_settings_errors_name_the_key(world: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model.path"):
        run(config_for(world, ""), str(tmp_path))
    with pytest.raises(ValueError, match="pairs.rho_th=1.5"):
        BdhsPairs(rho_th=1.5)
    with pytest.raises(ValueError, match="pairs.rounds=0"):
        BdhsPairs(rounds=0)


def test_runs_on_your_own_jsonl_and_image_folder(world: Path, checkpoint: str, tmp_path: Path) -> None:
    from test_realign_builder import own_data

    data = own_data(world, tmp_path / "data", 6)
    config = config_for(world, checkpoint, max_records=0)
    config.data.path = str(data / "meta" / "sft.jsonl")
    config.data.image_root = str(data)
    run(config, str(tmp_path / "work"))
    pairs_dir = tmp_path / "work" / "pairs"
    pairs = read_pairs(pairs_dir)
    assert len(pairs) >= 5 and not (tmp_path / "work" / "world").exists()
    for row in pairs:
        assert os.path.samefile(pairs_dir / row["image"], data / "photos" / os.path.basename(row["image"]))
        assert row["rejected"] != row["chosen"] and "rejected_image" not in row


def test_rewrites_go_beside_an_external_rejected_answer(world: Path, checkpoint: str, answerer: Answerer,
                                                        embedder: SentenceEmbedder, tmp_path: Path) -> None:
    """pairs.write_to=rejected_sampled (the BDHS paper's combination with an external rejected
    answer, loss.name=dpo_combined): the record's own rejected answer and provenance stay, the
    rewrite and BDHS's provenance go beside them; a record without a rejected answer is counted."""
    records, _ = captions(world, 4)
    external = [{**r, "rejected": "An empty picture.", "provenance": {"builder": "povid"}} for r in records[:3]]
    counts: Counter = Counter()
    rows = sampler(answerer, embedder, write_to="rejected_sampled").pairs(
        external + records[3:], str(world / "train"), str(tmp_path), 0, counts)
    assert counts["dropped_no_rejected"] == 1 and len(rows) == counts["kept"] >= 2
    plain = sampler(answerer, embedder).pairs(records[:3], str(world / "train"), str(tmp_path), 0, Counter())
    by_id = {row["id"]: row for row in plain}
    for row in rows:
        assert row["rejected"] == "An empty picture." and row["provenance"]["builder"] == "povid"
        assert row["provenance"]["sampled"]["builder"] == "bdhs"
        assert row["rejected_sampled"] == by_id[row["id"]]["rejected"]  # the same rewrite, in another field

    # configs/bdhs_train.py:combined trains on them: two rejected rows per record.
    import bdhs_train

    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = bdhs_train.get_config("combined")
    config.model.path, config.data.path = checkpoint, str(tmp_path / "pairs.jsonl")
    config.data.seq_len, config.data.length_buckets = 96, ""
    config.train.batch_size, config.train.steps, config.train.export = 8, 1, False
    metrics = train(config, str(tmp_path / "train"))["metrics"]
    assert np.isfinite(metrics["loss"]) and "sampled/rewards/margins" in metrics
