"""The reference's log-probs computed once over a JSONL record file (`mode=precompute`), so
that training with `reference='precomputed'` skips the reference forward in every step.

    python -m realign_jax.main --config=configs/train_llava.py:loss=rdpo --config.mode=precompute \\
        --config.data.source=jsonl --config.data.path=/data/pairs.jsonl --workdir=/tmp/ref
    python -m realign_jax.main --config=configs/train_llava.py:loss=rdpo --config.reference=precomputed \\
        --config.data.source=jsonl --config.data.path=/tmp/ref/records.jsonl --workdir=/tmp/rdpo

Same config as the training run (model, data, loss, batch): the reference is the starting
model (adapters off under LoRA). `<workdir>/records.jsonl` holds every input record as it was,
in input order, plus `ref_logps` ({row kind: summed log-prob}); relative image paths are made
absolute so the file works from its new folder. It pays off when training runs more than one
epoch: the fused step runs the reference forward once per epoch, this once in all
(benchmarks/step_throughput.py measures both).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from realign_jax.data.loader import BadRecordCounter, stack_examples
from realign_jax.data.records import BadRecord, Record
from realign_jax.data.sources import JsonlSource
from realign_jax.settings.keys import replace
from realign_jax.settings.runs import TrainSettings, load
from realign_jax.data.batching import shape_batch
from realign_jax.train.batches import batch_shape, make_encoder
from realign_jax.train.trainer import Trainer

OUTPUT = "records.jsonl"


def precompute(config: TrainSettings | Any, workdir: str) -> dict[str, Any]:
    """Write `<workdir>/records.jsonl` from `config`'s settings (a ConfigDict is loaded first);
    returns its path and the records written and skipped."""
    settings = load(config)
    data = settings.data
    if data.source != "jsonl":
        raise ValueError(f"mode=precompute reads and writes JSONL records; data.source={data.source!r} "
                         "(convert other sources with their builders' JSONL output)")
    if jax.process_count() > 1:
        raise ValueError("mode=precompute runs as one process; start it on one host")
    if settings.reference == "precomputed":  # the reference these log-probs stand for
        settings = replace(settings, reference="lora_off" if settings.lora.rank else "frozen_copy")
    trainer = Trainer(settings)
    state = trainer.init_state()
    encoder = make_encoder(settings, trainer.model_config)
    if not encoder.deterministic:
        raise ValueError(f"{settings.objective} with loss.alt_image / loss.noisy_scoring drawing images afresh: "
                         "their reference log-probs change every epoch, so they cannot be precomputed")
    source = JsonlSource(data.path, data.image_root or None)
    shape = batch_shape(settings, trainer.model_config, trainer.packed_row_multiple(), micro_batches=1)
    kinds = settings.layout.kinds
    os.makedirs(workdir, exist_ok=True)
    output = os.path.join(workdir, OUTPUT)
    skipped = BadRecordCounter()
    written = 0
    with open(output + ".tmp", "w") as out:  # renamed when complete: a stopped run leaves no half file
        for start in tqdm(range(0, len(source), settings.train.batch_size), desc="reference log-probs", unit="batch"):
            records, examples = [], []  # (the file's JSON, the checked record) of each good one
            for index in range(start, min(start + settings.train.batch_size, len(source))):
                try:
                    obj = source.raw(index)
                    record = source.record(obj, index)
                    examples.append(encoder.encode(record, source.where(index)))
                    records.append((obj, record))
                except BadRecord as error:
                    if data.on_bad_record == "error":
                        raise
                    skipped.add(error.reason, str(error))
            if not examples:
                continue
            examples += [examples[-1]] * (settings.train.batch_size - len(examples))  # a full batch: one compiled shape
            host = stack_examples(examples)
            ref = np.asarray(trainer.reference_logps(state, trainer.device_batch(shape_batch(host, shape))))
            for row, (obj, record) in enumerate(records):
                out.write(json.dumps(_with_ref_logps(obj, record, dict(zip(kinds, ref[row].tolist())))) + "\n")
            written += len(records)
    os.replace(output + ".tmp", output)
    return {"output": output, "written": written, "skipped": skipped.total, "skipped_examples": skipped.examples}


def _with_ref_logps(obj: dict[str, Any], record: Record, ref_logps: dict[str, float]) -> dict[str, Any]:
    """The record as the input file holds it, its image paths the resolved (absolute) ones the
    source read, with `ref_logps`."""
    obj = dict(obj)
    for field in ("image", "rejected_image"):
        if isinstance(obj.get(field), str):
            obj[field] = getattr(record, field)
    obj["ref_logps"] = ref_logps
    return obj
