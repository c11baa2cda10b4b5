"""`mode=inspect`: the first thing to run on new data.

It reads the configured source through the same encoder training uses (the objective's
rows, the checkpoint's chat template and image preprocessing) and prints a few examples as
the model sees them, with the image tokens collapsed to `<image>xN` and the answer tokens
(the label mask) between `[[` and `]]`, then the length histogram, the truncated and bad
records by reason, and how full the length buckets are.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from realign_jax.data import batching
from realign_jax.data.encode import EncodedRow
from realign_jax.data.prompting import IMAGE_PLACEHOLDER
from realign_jax.data.records import BadRecord
from realign_jax.data.sources import open_source
from realign_jax.train.batches import make_encoder
from realign_jax.settings.runs import TrainSettings, load
from realign_jax.train.trainer import model_config


@dataclasses.dataclass
class DataReport:
    records: int  # records read (at most inspect.max_records)
    lengths: list[int]  # the longest row of each good record, before truncation
    truncated: int
    bad: collections.Counter
    bad_examples: list[str]  # every bad record's line, in file order
    buckets: tuple[int, ...]


def _segments(row: EncodedRow, image_id: int) -> list[tuple[str, list[int]]]:
    """Runs of (kind, ids): 'image' placeholder runs, 'prompt' text, 'answer' text."""
    segments: list[tuple[str, list[int]]] = []
    for token, in_answer in zip(row.ids, row.loss_mask):
        kind = "image" if token == image_id else ("answer" if in_answer else "prompt")
        if segments and segments[-1][0] == kind:
            segments[-1][1].append(token)
        else:
            segments.append((kind, [token]))
    return segments


def render_row(row: EncodedRow, tokenizer: Any) -> str:
    """The row's text as the model reads it: `<image>xN` for image tokens, answer in [[ ]]."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    parts = []
    for kind, ids in _segments(row, image_id):
        if kind == "image":
            parts.append(f"{IMAGE_PLACEHOLDER}x{len(ids)}")
        else:
            text = tokenizer.decode(ids, skip_special_tokens=False)
            parts.append(f"[[{text}]]" if kind == "answer" else text)
    return "".join(parts)


def histogram(lengths: list[int], edges: tuple[int, ...], width: int = 40) -> list[str]:
    """One text bar per bucket (0, e1], (e1, e2], ... and one for rows over the last edge."""
    bins = [(0 if i == 0 else edges[i - 1], edge) for i, edge in enumerate(edges)]
    counts = [sum(lo < n <= hi for n in lengths) for lo, hi in bins]
    counts.append(sum(n > edges[-1] for n in lengths))
    labels = [f"({lo:>5}, {hi:>5}]" for lo, hi in bins] + [f"   > {edges[-1]:>5}  "]
    top = max(counts) or 1
    return [f"  {label} {'#' * round(width * c / top):<{width}} {c}" for label, c in zip(labels, counts)]


def inspect(config: TrainSettings | Any, out: TextIO = sys.stdout) -> DataReport:
    settings = load(config)
    data = settings.data
    if data.source == "random":
        raise ValueError("mode=inspect reads records: set data.source (e.g. jsonl) and data.path")
    model = model_config(settings)
    encoder = make_encoder(settings, model)
    source = open_source(data)
    buckets = batching.parse_buckets(data.length_buckets, data.seq_len)
    shown_limit, limit = settings.inspect.examples, min(len(source), settings.inspect.max_records)
    print(f"{data.source} {data.path}: {len(source)} records; objective {settings.objective} reads rows "
          f"{', '.join(settings.layout.stacked_kinds)} and {settings.layout.num_images} image(s); data.seq_len="
          f"{data.seq_len}, buckets {buckets}, truncation={data.truncation}", file=out)
    report = DataReport(limit, [], 0, collections.Counter(), [], buckets)
    shown = 0
    for index in tqdm(range(limit), desc="inspect", unit="record", disable=limit < 200):
        where = source.where(index)
        try:
            record = source[index]
            _, rows = encoder.encode_with_rows(record, where)  # images decoded and preprocessed, as in training
        except BadRecord as error:
            report.bad[error.reason] += 1
            report.bad_examples.append(str(error))  # every one, in file order: the list to fix
            continue
        report.lengths.append(max(r.full_length for r in rows))
        report.truncated += any(r.truncated for r in rows)
        if shown < shown_limit:
            shown += 1
            print(f"\n--- {where} (id {record.id}) ---", file=out)
            for row in rows:
                answer = sum(row.loss_mask)
                cut = f", cut from {row.full_length}" if row.truncated else ""
                print(f"{row.kind}: {len(row.ids)} tokens{cut} (prompt {len(row.ids) - answer}, answer {answer})",
                      file=out)
                print(f"  {render_row(row, encoder.tokenizer)}", file=out)
    print(f"\nlongest row per record, {len(report.lengths)} good of {limit} read (bucket edges):", file=out)
    if report.lengths:
        for line in histogram(report.lengths, buckets):
            print(line, file=out)
        print(f"  mean {np.mean(report.lengths):.1f}, max {max(report.lengths)}; truncated to data.seq_len: "
              f"{report.truncated}", file=out)
    if report.bad:
        print(f"bad records: {dict(report.bad)}; with data.on_bad_record='skip' training skips them", file=out)
        for message in report.bad_examples:
            print(f"  {message}", file=out)
    return report
