"""Online BDHS (docs/methods.md section 4): rejected answers sampled from the *current*
policy, with its image hidden, every `online_bdhs.every` steps of training.

`OnlineBdhsBatches` stands where the Grain iterator stands in the training loop. At each
round boundary it takes the next `every x batch_size` records of `data.path` (SFT-style, with
`chosen`), has its `RoundSampler` rewrite them with the policy the loop is training now, writes
the pairs to `<workdir>/online_bdhs/round-NNNNN.jsonl` and serves them through the ordinary
pipeline for the next `every` steps. The sampler is BDHS's (pairs/bdhs.py `online_sampler`),
built by the top level (main.py `train`) and handed in: train/ does not import pairs/
(docs/design.md, "Rooms and who may import whom"). Its state (round, and the pipeline's state inside the
round) goes into the checkpoint; a resumed run reads the round's file back instead of
sampling again, so it trains on exactly the pairs the interrupted run did.
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
from realign_jax.data.jsonl import json_objects
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


class OnlineBdhsBatches:
    """Batches of on-policy BDHS pairs, a round of `every` steps at a time (module docstring).
    `policy` returns the model being trained at the moment it is called; `sampler` writes a
    round's pairs with it (required: None only names who should have passed it)."""

    def __init__(self, settings: TrainSettings, model_config: Any, workdir: str,
                 policy: Callable[[], LlavaModel], sampler: RoundSampler | None = None):
        online, data = settings.online_bdhs, settings.data
        if online.every < 1:
            raise ValueError(f"online_bdhs.every={online.every} must be >= 1 (steps per sampling round)")
        if jax.process_count() > 1:
            raise ValueError("online_bdhs runs on one host for now: it samples in the training process")
        if sampler is None:
            raise ValueError("online_bdhs.every is set but no round sampler was given: train through "
                             "realign_jax.main (its `train` plugs in pairs/bdhs.py's online_sampler)")
        self.settings, self.policy, self.sampler = settings, policy, sampler
        self.every, self.seed = online.every, data.seed
        self.records = [record for _, record in json_objects(data.path)]
        self.image_root = data.image_root or os.path.dirname(os.path.abspath(data.path))
        self.order = np.random.default_rng(self.seed).permutation(len(self.records))
        self.folder = os.path.join(workdir, "online_bdhs")
        self.encoder = make_encoder(settings, model_config)
        self.generation_batch = online.batch_size
        self.round, self.served, self.counts = -1, 0, Counter()
        self._inner: Any = None

    def __iter__(self) -> OnlineBdhsBatches:
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
            raise ValueError(f"online BDHS round {index}: no record of {self.settings.data.path} gave a pair "
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
