"""Online and mixed DPO: every `online_dpo.every` steps the policy being trained samples k answers
per record, the world's ground truth ranks them and the best and worst become the pair; mixed DPO
keeps a record's own pair with probability `offline_share`. Rounds are kept so a resumed run
trains on the same pairs."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from realign_jax.data.chat import ChatCodec
from realign_jax.main import train
from realign_jax.models.answering import Answerer
from realign_jax.pairs.annotators import WorldAnnotator
from realign_jax.pairs.builder_inputs import read_records
from realign_jax.pairs.online_dpo import OnlineDpoSampler
from realign_jax.settings import runs as run_settings
from realign_jax.settings.sections import OnlineDpoSettings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import online_dpo_train  # noqa: E402

BATCH, EVERY, STEPS = 8, 2, 4  # 8: one row per fake device


@pytest.fixture(scope="module")
def world_pairs(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The world's captions as preference pairs: each caption's rejected answer is the next
    image's caption (images relative to the pairs file, as a builder writes them)."""
    records = read_records(str(small_world / "train" / "captions.jsonl"))
    folder = tmp_path_factory.mktemp("pairs")
    rows = [{**r, "image": os.path.relpath(str(small_world / "train" / r["image"]), folder),
             "rejected": records[(i + 1) % len(records)]["chosen"]} for i, r in enumerate(records)]
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def online_config(small_world: Path, small_world_llava: str, variant: str | None = None, data: str = ""):
    config = online_dpo_train.get_config(variant)
    config.model.path = small_world_llava
    config.data.path = data or str(small_world / "train" / "captions.jsonl")
    config.data.seq_len, config.data.length_buckets = 96, ""
    config.train.batch_size, config.train.steps, config.train.checkpoint_every = BATCH, STEPS, 1
    config.train.export = False
    config.optim.lr, config.optim.warmup_ratio = 0.5, 0.0  # large: the policy visibly moves in two steps
    online = config.online_dpo
    online.every, online.samples, online.max_new_tokens, online.batch_size = EVERY, 4, 12, 16
    online.world = str(small_world)
    return config


def rounds(workdir: Path) -> list[list[dict]]:
    return [read_records(str(p)) for p in sorted((workdir / "online_dpo").glob("round-*.jsonl"))]


def picked(config, index: int) -> list[dict]:
    """The records round `index` draws (train/online.py's order)."""
    records = read_records(config.data.path)
    order = np.random.default_rng(config.data.seed).permutation(len(records))
    return [records[order[(index * EVERY * BATCH + i) % len(records)]] for i in range(EVERY * BATCH)]


def test_online_dpo_pairs_the_best_and_worst_policy_samples_and_resumes(small_world, small_world_llava, tmp_path):
    config = online_config(small_world, small_world_llava)
    whole = train(config, str(tmp_path / "whole"))
    written = rounds(tmp_path / "whole")
    assert whole["step"] == STEPS and len(written) == STEPS // EVERY
    annotator = WorldAnnotator(str(small_world), str(tmp_path / "whole" / "online_dpo"))
    for rows in written:
        assert rows and all(r["provenance"]["builder"] == "online_dpo" for r in rows)
        for row in rows:
            scores = row["provenance"]["scores"]
            assert len(scores) == 4 and max(scores) == scores[row["provenance"]["chosen_index"]] > min(scores)
            # the written answers score as the provenance says, read back from the round file
            assert annotator.scores(row, [row["chosen"], row["rejected"]]) == [max(scores), min(scores)]

    # Round 0 comes from the untrained policy (LoRA starts at zero): the base checkpoint's own
    # samples of the same records with the same seed; round 1's policy has trained two steps.
    settings = run_settings.load(config).online_dpo
    sampler = OnlineDpoSampler(settings, WorldAnnotator(str(small_world), ""))
    answerer = Answerer.load(small_world_llava, ChatCodec.load, batch_size=settings.batch_size)
    folder = str(tmp_path / "whole" / "online_dpo")
    for index, expected_same in ((0, True), (1, False)):
        base = sampler.pairs(answerer, picked(config, index), str(small_world / "train"), folder,
                             config.data.seed + index, Counter())
        same = [(b["chosen"], b["rejected"]) for b in base] == [(p["chosen"], p["rejected"]) for p in written[index]]
        assert same == expected_same, index

    # Killed after step 3 (inside round 1) and restarted: round 1 is read back from its file.
    cut = train(config, str(tmp_path / "cut"), stop_after=3)
    assert cut["stopped_at"] == 3
    resumed = train(config, str(tmp_path / "cut"))
    assert resumed["resumed_from"] == 3 and rounds(tmp_path / "cut") == written
    assert resumed["metrics"]["loss"] == pytest.approx(whole["metrics"]["loss"], rel=1e-5)


def test_mixed_dpo_keeps_about_half_of_the_records_own_pairs_and_resumes(small_world, small_world_llava, world_pairs,
                                                                         tmp_path):
    config = online_config(small_world, small_world_llava, "mixed", data=world_pairs)
    whole = train(config, str(tmp_path / "whole"))
    written = [row for r in rounds(tmp_path / "whole") for row in r]
    own = {r["id"]: r for r in read_records(world_pairs)}
    offline = [r for r in written if r.get("provenance", {}).get("builder") != "online_dpo"]
    sampled = [r for r in written if r not in offline]
    assert offline and sampled
    # A kept pair is the record's own, its image still opening from the round's folder.
    folder = tmp_path / "whole" / "online_dpo"
    for row in offline:
        assert (row["chosen"], row["rejected"]) == (own[row["id"]]["chosen"], own[row["id"]]["rejected"])
        assert (folder / row["image"]).resolve() == (Path(world_pairs).parent / own[row["id"]]["image"]).resolve()
    # alpha ~ Bernoulli(0.5) per record and round: 32 draws, so well inside (4, 28).
    assert 4 < len(offline) < 28

    cut = train(config, str(tmp_path / "cut"), stop_after=3)
    resumed = train(config, str(tmp_path / "cut"))
    assert cut["stopped_at"] == 3 and resumed["resumed_from"] == 3
    assert [row for r in rounds(tmp_path / "cut") for row in r] == written
    assert resumed["metrics"]["loss"] == pytest.approx(whole["metrics"]["loss"], rel=1e-5)


def test_tied_samples_are_dropped_and_a_missing_own_pair_is_refused(small_world, small_world_llava, tmp_path):
    records = read_records(str(small_world / "train" / "captions.jsonl"))[:4]
    annotator = WorldAnnotator(str(small_world), "")
    # Near-zero temperature: the k samples are all the greedy answer, so every record's tie.
    settings = OnlineDpoSettings(every=1, temperature=1e-4, max_new_tokens=12, batch_size=16)
    answerer = Answerer.load(small_world_llava, ChatCodec.load, batch_size=settings.batch_size)
    counts: Counter = Counter()
    rows = OnlineDpoSampler(settings, annotator).pairs(answerer, records, str(small_world / "train"), str(tmp_path), 0,
                                                       counts)
    assert rows == [] and counts == Counter(dropped_tied=4)
    with pytest.raises(ValueError, match=r"record '.+': online_dpo.offline_share=1.0 drew its own pair, but field "
                                         r"'rejected' is empty"):
        OnlineDpoSampler(OnlineDpoSettings(every=1, offline_share=1.0), annotator).pairs(
            answerer, records, str(small_world / "train"), str(tmp_path), 0, Counter())


def test_online_dpo_settings_refuse_what_a_sampled_pair_cannot_feed(small_world, small_world_llava):
    config = online_config(small_world, small_world_llava)
    config.loss.name = "dpo_combined"
    with pytest.raises(ValueError, match=r"online_dpo.every is set but loss.name='dpo_combined'"):
        run_settings.load(config)
    config = online_config(small_world, small_world_llava)
    config.reference = "precomputed"
    with pytest.raises(ValueError, match=r"reference='precomputed' cannot go with online_dpo.every"):
        run_settings.load(config)
    config = online_config(small_world, small_world_llava)
    config.online_dpo.samples = 1
    with pytest.raises(ValueError, match=r"online_dpo.samples=1 must be >= 2"):
        run_settings.load(config)
