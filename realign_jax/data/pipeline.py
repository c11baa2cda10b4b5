"""The Grain pipeline: source -> this process's slice -> seeded shuffle (fresh each epoch) ->
read + encode (images decoded and preprocessed, chat template, rows, masks) -> batch.

Bad records either stop the run with one line naming file, record and field
(`on_bad_record='error'`) or are skipped and counted (`'skip'`); `BadRecordCounter` holds the
counts the loop reports. The iterator's state (`get_state`/`set_state`) goes into the Orbax
checkpoint, so a resumed run continues with the next unseen example.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import grain
import numpy as np

from realign_jax.data.encode import ExampleEncoder, TooLong
from realign_jax.data.records import BadRecord

ON_BAD_RECORD = ("error", "skip")


@dataclasses.dataclass
class BadRecordCounter:
    """Skipped records by reason ('too_long' or the field at fault), and the last few messages."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[str] = dataclasses.field(default_factory=list)

    def add(self, error: BadRecord) -> None:
        self.counts["too_long" if isinstance(error, TooLong) else error.field] += 1
        if len(self.examples) < 5:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def epoch_order(num_records: int, seed: int, shard_index: int, shard_count: int) -> grain.MapDataset:
    """Record indices of this process, reshuffled every epoch, repeating forever.

    Processes take interleaved slices of one global permutation per epoch, so in every epoch
    their records are disjoint and together cover the whole dataset (the remainder that
    does not split evenly is dropped for that epoch).
    """
    per_process = num_records // shard_count
    if per_process == 0:
        raise ValueError(f"{num_records} records cannot be split over {shard_count} processes")

    def index(i: int) -> int:
        epoch, position = divmod(i, per_process)
        permutation = np.random.default_rng((seed, epoch)).permutation(num_records)
        return int(permutation[position * shard_count + shard_index])

    return grain.MapDataset.range(2**62).map(index)


def dataset(source: Any, encoder: ExampleEncoder, batch_size: int, *, seed: int, on_bad_record: str = "error",
            counter: BadRecordCounter | None = None, shard_index: int = 0,
            shard_count: int = 1) -> grain.IterDataset:
    """Batches of this process's share (`batch_size` is global: each process makes its part)."""
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"data.on_bad_record={on_bad_record!r}: choose one of {ON_BAD_RECORD}")
    if batch_size % shard_count:
        raise ValueError(f"train.batch_size={batch_size} does not split over {shard_count} processes")
    counter = counter if counter is not None else BadRecordCounter()
    good = [0]

    def read(index: int) -> dict[str, np.ndarray] | None:
        try:
            example = encoder.encode(source[index], source.where(index))
        except BadRecord as error:
            if on_bad_record == "error":
                raise
            counter.add(error)
            if not good[0] and counter.total >= len(source):
                raise ValueError(f"all {len(source)} records were skipped as bad, e.g. {counter.examples[0]}") from None
            return None
        good[0] += 1
        return example

    examples = epoch_order(len(source), seed, shard_index, shard_count).map(read)
    return examples.to_iter_dataset().filter(lambda x: x is not None) \
        .batch(batch_size // shard_count, drop_remainder=True)
