"""The Grain pipeline: source -> this process's slice -> seeded shuffle (fresh each epoch) ->
read + encode (images decoded and preprocessed, chat template, rows, masks) -> batches of
good examples -> optional worker processes.

Bad records either stop the run with one line naming file, record and field
(`on_bad_record='error'`) or are skipped (`'skip'`). A skipped record travels beside the batch
that skipped it (`LoadedBatch.bad_records`, next to its arrays, never among them), so the
counts are of records the run consumed, not of records Grain's read-ahead threads touched, and
they survive worker processes; the loop moves them into a `BadRecordCounter` with
`take_bad_records`. The iterator's state
(`get_state`/`set_state`) goes into the Orbax checkpoint, so a resumed run continues with the
next unseen example.

Batches are padded to `seq_len`; data/batching.py then trims each to its length bucket or
packs it, so short data compiles a few small steps instead of running every step at full
length.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from realign_jax.data.encode import ExampleEncoder
from realign_jax.data.records import BadRecord, check_on_bad_record

# Under on_bad_record='error', how many records before the bad one met are checked for an
# earlier one (a full scan of a large file would take minutes; mode=inspect lists them all).
FILE_ORDER_SCAN = 5000


@dataclasses.dataclass(frozen=True)
class LoadedBatch(Mapping):
    """A host batch as the pipeline makes it: a read-only mapping of its arrays (what the step
    gets), with its bookkeeping beside them."""

    arrays: dict[str, np.ndarray]
    bad_records: tuple[tuple[str, str, int], ...] = ()  # (reason, message, epoch) of records skipped to make it
    epoch: int = 0  # the epoch (of this process's order) its last example came from

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


@dataclasses.dataclass
class BadRecordCounter:
    """Skipped records by reason ('too_long' or the field at fault), and the first few messages."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[str] = dataclasses.field(default_factory=list)

    def add(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def state(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "examples": list(self.examples)}

    def restore(self, state: dict[str, Any]) -> None:
        self.counts = collections.Counter(state.get("counts", {}))
        self.examples = list(state.get("examples", []))


def take_bad_records(batch: LoadedBatch | dict[str, np.ndarray], counter: BadRecordCounter) -> dict[str, np.ndarray]:
    """The batch's arrays, with the records it skipped moved into `counter` (the random
    smoke-test pairs come as plain arrays: nothing is skipped there)."""
    if not isinstance(batch, LoadedBatch):
        return batch
    for reason, message, _ in batch.bad_records:
        counter.add(reason, message)
    return batch.arrays


def read_ahead(batch: LoadedBatch, epoch: int) -> collections.Counter:
    """The batch's skipped records by reason that belong to `epoch` or later: the part of its
    count an epoch-end line for an earlier epoch leaves out."""
    return collections.Counter(reason for reason, _, from_epoch in batch.bad_records if from_epoch >= epoch)


class _EpochOrder:
    """position -> (epoch, record index); a class so worker processes can unpickle it."""

    def __init__(self, num_records: int, seed: int, shard_index: int, shard_count: int):
        self.num_records, self.seed, self.shard_index, self.shard_count = num_records, seed, shard_index, shard_count
        self.per_process = num_records // shard_count
        self._cached: tuple[int, np.ndarray] | None = None  # the current epoch's permutation

    def permutation(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, np.random.default_rng((self.seed, epoch)).permutation(self.num_records))
        return self._cached[1]

    def __call__(self, i: int) -> tuple[int, int]:
        epoch, position = divmod(i, self.per_process)
        return epoch, int(self.permutation(epoch)[position * self.shard_count + self.shard_index])


def epoch_order(num_records: int, seed: int, shard_index: int, shard_count: int) -> grain.MapDataset:
    """(epoch, record index) of this process, reshuffled every epoch, repeating forever.

    Processes take interleaved slices of one global permutation per epoch, so in every epoch
    their records are disjoint and together cover the whole dataset (the remainder that
    does not split evenly is dropped for that epoch).
    """
    if num_records // shard_count == 0:
        raise ValueError(f"{num_records} records cannot be split over {shard_count} processes")
    return grain.MapDataset.range(2**62).map(_EpochOrder(num_records, seed, shard_index, shard_count))


def per_process_batch(batch_size: int, shard_count: int) -> int:
    """This process's part of a global batch."""
    if batch_size % shard_count:
        raise ValueError(f"train.batch_size={batch_size} does not split over {shard_count} processes")
    return batch_size // shard_count


@dataclasses.dataclass(frozen=True)
class _Skipped:
    """A bad record in flight (picklable, unlike BadRecord, for worker processes)."""

    reason: str
    message: str


def stack_examples(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Encoded examples -> a host batch: each key's arrays stacked on a new leading axis."""
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


class _GoodBatchesIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batch_size: int, num_records: int):
        super().__init__(parent)
        self._batch_size, self._num_records = batch_size, num_records
        self._bad_in_a_row = 0

    def __next__(self) -> LoadedBatch:
        examples: list[dict[str, np.ndarray]] = []
        skipped: list[tuple[str, str, int]] = []
        epoch = 0
        while len(examples) < self._batch_size:
            epoch, item = next(self._parent)
            if isinstance(item, _Skipped):
                skipped.append((item.reason, item.message, epoch))
                self._bad_in_a_row += 1
                if self._bad_in_a_row >= self._num_records:
                    raise ValueError(f"all {self._num_records} records were skipped as bad, e.g. {item.message}")
                continue
            self._bad_in_a_row = 0
            examples.append(item)
        return LoadedBatch(stack_examples(examples), tuple(skipped), epoch)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


class _GoodBatches(grain.IterDataset):
    """Batches of `batch_size` good examples; the skipped records ride along beside each."""

    def __init__(self, parent: grain.IterDataset, batch_size: int, num_records: int):
        super().__init__(parent)
        self._batch_size, self._num_records = batch_size, num_records

    def __iter__(self) -> _GoodBatchesIterator:
        return _GoodBatchesIterator(self._parent.__iter__(), self._batch_size, self._num_records)


class _Reader:
    """record index -> encoded example, or `_Skipped` under on_bad_record='skip' (a class, not
    a closure, so worker processes can unpickle it).

    Up to `cache_bytes` of encoded examples stay in memory (each process its own), so later
    epochs skip image decoding and tokenising; only when the encoding draws nothing at random.
    """

    def __init__(self, source: Any, encoder: ExampleEncoder, on_bad_record: str, seed: int, cache_bytes: int = 0):
        self.source, self.encoder, self.on_bad_record, self.seed = source, encoder, on_bad_record, seed
        self.cache_bytes = cache_bytes if encoder.deterministic else 0
        self.cache: dict[int, dict[str, np.ndarray]] = {}
        self.cached_bytes = 0

    def __call__(self, item: tuple[int, int]) -> tuple[int, dict[str, np.ndarray] | _Skipped]:
        epoch, index = item
        if index in self.cache:
            return epoch, self.cache[index]
        rng = np.random.default_rng((self.seed, epoch, index))  # image noise: fresh per epoch, same on resume
        try:
            example = self.encoder.encode(self.source[index], self.source.where(index), rng)
        except BadRecord as error:
            if self.on_bad_record == "error":
                raise self.first_in_file_order(index, error) from None
            return epoch, _Skipped(error.reason, str(error))
        size = sum(v.nbytes for v in example.values())
        if self.cached_bytes + size <= self.cache_bytes:
            self.cache[index] = example
            self.cached_bytes += size
        return epoch, example

    def first_in_file_order(self, index: int, error: BadRecord) -> BadRecord:
        """The first bad record of the source (file order), given that record `index` is bad:
        what `on_bad_record='error'` reports, so fixing and rerunning walks the file from the
        top instead of the shuffled order. Checks at most FILE_ORDER_SCAN records before it."""
        rng = np.random.default_rng(0)  # image noise does not decide whether a record is bad
        for earlier in range(min(index, FILE_ORDER_SCAN)):
            try:
                self.encoder.encode(self.source[earlier], self.source.where(earlier), rng)
            except BadRecord as found:
                return found
        return error


def dataset(source: Any, encoder: ExampleEncoder, batch_size: int, *, seed: int, on_bad_record: str = "error",
            shard_index: int = 0, shard_count: int = 1, workers: int = 0,
            cache_mb: int = 0, read_threads: int = 4) -> grain.IterDataset:
    """Batches of this process's share (`batch_size` is global: each process makes its part).

    `read_threads` threads read and encode ahead in this process; `workers > 0` moves the whole
    pipeline into that many worker processes (images and tokenisation then use more cores).
    `cache_mb` of encoded examples are kept for later epochs (see `_Reader`).
    """
    check_on_bad_record(on_bad_record)
    local_batch = per_process_batch(batch_size, shard_count)
    reader = _Reader(source, encoder, on_bad_record, seed, cache_bytes=cache_mb * 2**20)
    examples = epoch_order(len(source), seed, shard_index, shard_count).map(reader)
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * local_batch)
    batches: grain.IterDataset = _GoodBatches(examples.to_iter_dataset(options), local_batch, len(source))
    if workers > 0:
        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; outside an absl app use defaults
            flags.FLAGS.mark_as_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return batches
