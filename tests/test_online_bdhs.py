"""Online BDHS: every `online_bdhs.every` steps the policy being trained rewrites the next
records with its image hidden; the rounds are kept so a resumed run trains on the same pairs."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from realign_jax.data.chat import ChatCodec
from realign_jax.main import train
from realign_jax.settings import runs as run_settings
from realign_jax.models.answering import Answerer
from realign_jax.pairs.bdhs import BdhsSampler
from realign_jax.pairs.builder_inputs import read_records
from realign_jax.pairs.sentence_embedder import SentenceEmbedder

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
import bdhs_train  # noqa: E402

BATCH, EVERY, STEPS = 8, 2, 4  # 8: one row per fake device


def online_config(small_world: Path, small_world_llava: str):
    config = bdhs_train.get_config("online")
    config.model.path = small_world_llava
    config.data.path = str(small_world / "train" / "captions.jsonl")
    config.data.seq_len, config.data.length_buckets = 96, ""
    config.train.batch_size, config.train.steps, config.train.checkpoint_every = BATCH, STEPS, 1
    config.train.export = False
    config.optim.lr, config.optim.warmup_ratio = 0.5, 0.0  # large: the policy visibly moves in two steps
    config.online_bdhs.every, config.online_bdhs.max_new_tokens, config.online_bdhs.batch_size = EVERY, 8, 8
    config.online_bdhs.eps_s = 1.01  # accept the first rewrite: fewer generation programs to compile
    return config


def rounds(workdir: Path) -> list[list[dict]]:
    return [read_records(str(p)) for p in sorted((workdir / "online_bdhs").glob("round-*.jsonl"))]


def test_rounds_are_sampled_from_the_current_policy_and_survive_a_restart(small_world, small_world_llava, tmp_path):
    config = online_config(small_world, small_world_llava)
    whole = train(config, str(tmp_path / "whole"))
    written = rounds(tmp_path / "whole")
    assert whole["step"] == STEPS and len(written) == STEPS // EVERY
    assert all(len(r) == EVERY * BATCH and all(p["rejected"] != p["chosen"] for p in r) for r in written)
    assert all(p["provenance"]["builder"] == "bdhs" for r in written for p in r)

    # Round 0 comes from the untrained policy (LoRA starts at zero): the base checkpoint's own
    # BDHS samples of the same records; round 1's policy has trained two steps and writes
    # otherwise about the same records.
    records = read_records(config.data.path)
    order = np.random.default_rng(config.data.seed).permutation(len(records))
    sampler = BdhsSampler(Answerer.load(small_world_llava, ChatCodec.load, batch_size=8), SentenceEmbedder.load(),
                          run_settings.load(config).online_bdhs)
    folder = str(tmp_path / "whole" / "online_bdhs")
    image_root = str(small_world / "train")
    for index, expected_same in ((0, True), (1, False)):
        picked = [records[order[(index * EVERY * BATCH + i) % len(records)]] for i in range(EVERY * BATCH)]
        base = sampler.pairs(picked, image_root, folder, config.data.seed + index, Counter())
        same = [b["rejected"] for b in base] == [p["rejected"] for p in written[index]]
        assert same == expected_same, index

    # Killed after step 3 (inside round 1) and restarted: the run reads round 1 back from its
    # file and ends where the uninterrupted one did.
    cut = train(config, str(tmp_path / "cut"), stop_after=3)
    assert cut["stopped_at"] == 3
    resumed = train(config, str(tmp_path / "cut"))
    assert resumed["resumed_from"] == 3 and rounds(tmp_path / "cut") == written
    assert resumed["metrics"]["loss"] == pytest.approx(whole["metrics"]["loss"], rel=1e-5)


def test_online_batches_need_an_online_method_and_a_sampler(small_world, small_world_llava, tmp_path):
    from realign_jax.train.online import OnlineBatches
    from realign_jax.settings.runs import load

    config = online_config(small_world, small_world_llava)
    with pytest.raises(ValueError, match=r"online_bdhs.every is set but no round sampler was given"):
        OnlineBatches(load(config), None, str(tmp_path), lambda: None)
    config.online_bdhs.every = 0
    with pytest.raises(ValueError, match=r"neither online_bdhs.every nor online_dpo.every is set"):
        OnlineBatches(load(config), None, str(tmp_path), lambda: None)
