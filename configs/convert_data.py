"""Convert any record source into ArrayRecord shards with the images embedded (`mode=convert`).

    python -m realign_jax.main --config=configs/convert_data.py \\
        --config.data.source=jsonl --config.data.path=train.jsonl --config.convert.output=/data/train_ar

Expected: `convert: N records -> 1 shard(s) in /data/train_ar`, then train on them with
`--config.data.source=arrayrecord --config.data.path=/data/train_ar`. Every image is decoded once
during conversion: a missing or corrupt one stops it (`data.on_bad_record=error`, one line
naming record and field) or is skipped and counted (`skip`). Nothing is written to the output
folder until the conversion has finished.
"""

import ml_collections

import common  # configs/common.py: realign_jax.cli puts this folder on the import path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    common.config_arg(arg, "convert_data.py")
    return common.to_config(common.runs.ConvertRun(data=common.runs.RecordSource(source="jsonl")))
