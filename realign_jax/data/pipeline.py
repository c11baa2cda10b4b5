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
import functools
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

    @functools.lru_cache(maxsize=2)
    def permutation(epoch: int) -> np.ndarray:
        return np.random.default_rng((seed, epoch)).permutation(num_records)

    def index(i: int) -> int:
        epoch, position = divmod(i, per_process)
        return int(permutation(epoch)[position * shard_count + shard_index])

    return grain.MapDataset.range(2**62).map(index)


def per_process_batch(batch_size: int, shard_count: int) -> int:
    """This process's part of a global batch."""
    if batch_size % shard_count:
        raise ValueError(f"train.batch_size={batch_size} does not split over {shard_count} processes")
    return batch_size // shard_count


def dataset(source: Any, encoder: ExampleEncoder, batch_size: int, *, seed: int, on_bad_record: str = "error",
            counter: BadRecordCounter | None = None, shard_index: int = 0,
            shard_count: int = 1) -> grain.IterDataset:
    """Batches of this process's share (`batch_size` is global: each process makes its part)."""
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"data.on_bad_record={on_bad_record!r}: choose one of {ON_BAD_RECORD}")
    local_batch = per_process_batch(batch_size, shard_count)
    counter = counter if counter is not None else BadRecordCounter()
    good = [0]

    def read(index: int) -> dict[str, np.ndarray] | BadRecord:
        try:
            return encoder.encode(source[index], source.where(index))
        except BadRecord as error:
            if on_bad_record == "error":
                raise
            return error

    def keep(example: dict[str, np.ndarray] | BadRecord) -> bool:
        """Runs as batches are drawn (after Grain's read-ahead threads), so the counts are of
        records the run consumed, not of records read ahead."""
        if not isinstance(example, BadRecord):
            good[0] += 1
            return True
        counter.add(example)
        if not good[0] and counter.total >= len(source):
            raise ValueError(f"all {len(source)} records were skipped as bad, e.g. {counter.examples[0]}")
        return False

    examples = epoch_order(len(source), seed, shard_index, shard_count).map(read)
    return examples.to_iter_dataset().filter(keep).batch(local_batch, drop_remainder=True)
