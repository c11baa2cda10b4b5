"""Pairs sampled from the *current* policy while it trains, a round every `every` steps:
online BDHS (`online_bdhs`, docs/methods.md section 4: rejected answers written with the image
hidden) and online / mixed DPO (`online_dpo`: k sampled answers ranked by an annotator).

`OnlineBatches` stands where the Grain iterator stands in the training loop. At each round
boundary it takes the next `every x batch_size` records of `data.path`, has its `RoundSampler`
turn them into pairs with the policy the loop is training now, writes the pairs to
`<workdir>/<method>/round-NNNNN.jsonl` (method = the section's name) and serves them through the
ordinary pipeline for the next `every` steps. The sampler is the method's (pairs/bdhs.py
`online_sampler`, pairs/online_dpo.py `online_dpo_sampler`), built by the top level (main.py
`train`) and handed in: train/ does not import pairs/ (docs/design.md, "Rooms and who may import
whom"). Its state (round, and the pipeline's state inside the round) goes into the checkpoint;
a resumed run reads the round's file back instead of sampling again, so it trains on exactly
the pairs the interrupted run did.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from realign_jax.data import loader
from realign_jax.data.chat import ChatCodec
from realign_jax.data.sources import JsonlSource
from realign_jax.files import write_atomically
from realign_jax.models.answering import Answerer
from realign_jax.models.llava import LlavaModel
from realign_jax.train.batches import make_encoder
from realign_jax.settings.runs import TrainSettings


class RoundSampler(Protocol):
    """Preference records for those of `records` it can rewrite with `answerer` (the rest counted
    in `counts`), images relative to `output`, where they will be written."""

    def __call__(self, answerer: Answerer, records: Sequence[Mapping[str, Any]], image_root: str, output: str,
                 seed: int, counts: Counter) -> list[dict[str, Any]]: ...


class OnlineBatches:
    """Batches of on-policy pairs, a round of `every` steps at a time (module docstring), for
    the run's online method (`settings.online_method`). `policy` returns the model being trained
    at the moment it is called; `sampler` writes a round's pairs with it (required: None only
    names who should have passed it)."""

    def __init__(self, settings: TrainSettings, model_config: Any, workdir: str,
                 policy: Callable[[], LlavaModel], sampler: RoundSampler | None = None):
        self.method = settings.online_method
        if not self.method:
            raise ValueError("neither online_bdhs.every nor online_dpo.every is set (steps per sampling round)")
        online, data = getattr(settings, self.method), settings.data
        if jax.process_count() > 1:
            raise ValueError(f"{self.method} runs on one host for now: it samples in the training process")
        if sampler is None:
            raise ValueError(f"{self.method}.every is set but no round sampler was given: train through "
                             "realign_jax.main (its `train` plugs in the method's sampler)")
        self.settings, self.policy, self.sampler = settings, policy, sampler
        self.every, self.seed = online.every, data.seed
        records = JsonlSource(data.path, data.image_root or None)  # a file, or a builder's folder of shards
        self.records = [records.resolved_raw(i) for i in range(len(records))]
        self.image_root = ""  # every image path above is absolute
        self.order = np.random.default_rng(self.seed).permutation(len(self.records))
        self.folder = os.path.join(workdir, self.method)
        self.encoder = make_encoder(settings, model_config)
        self.generation_batch = online.batch_size
        self.round, self.served, self.counts = -1, 0, Counter()
        self._inner: Any = None

    def __iter__(self) -> OnlineBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._inner is None or self.served == self.every:
            self._open(self.round + 1)
        self.served += 1
        return next(self._inner)

    def _round_path(self, index: int) -> str:
        return os.path.join(self.folder, f"round-{index:05d}.jsonl")

    def _open(self, index: int, inner_state: dict[str, Any] | None = None) -> None:
        """Serve round `index`: its file if written, else sampled now from the current policy."""
        path = self._round_path(index)
        if not os.path.exists(path):
            if inner_state is not None:
                raise ValueError(f"{path} is missing: the checkpoint was taken inside that round; "
                                 "its pairs cannot be sampled again from the same policy")
            self._sample(index, path)
        if self._inner is not None:
            self._inner.close()
        source = JsonlSource(path)
        self._inner = iter(loader.dataset(source, self.encoder, self.settings.train.batch_size, seed=self.seed + index,
                                            on_bad_record=self.settings.data.on_bad_record,
                                            cache_mb=self.settings.data.cache_mb))
        if inner_state is not None:
            self._inner.set_state(inner_state)
        self.round, self.served = index, 0 if inner_state is None else self.served

    def _sample(self, index: int, path: str) -> None:
        size = self.every * self.settings.train.batch_size
        picked = [self.records[self.order[(index * size + i) % len(self.records)]] for i in range(size)]
        codec = ChatCodec(self.encoder.tokenizer, self.encoder.processing)
        answerer = Answerer(self.policy(), codec, batch_size=self.generation_batch)
        counts: Counter[str] = Counter()
        rows = self.sampler(answerer, picked, self.image_root, self.folder, self.seed + index, counts)
        if not rows:
            raise ValueError(f"{self.method} round {index}: no record of {self.settings.data.path} gave a pair "
                             f"({dict(counts)})")
        os.makedirs(self.folder, exist_ok=True)
        write_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.counts.update(counts)

    def get_state(self) -> dict[str, Any]:
        return {"round": self.round, "served": self.served,
                "inner": self._inner.get_state() if self._inner is not None else None}

    def set_state(self, state: dict[str, Any]) -> None:
        if state["round"] < 0:
            return
        self.served = state["served"]
        self._open(state["round"], state["inner"])

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
