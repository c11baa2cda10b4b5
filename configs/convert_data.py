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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.mode = "convert"
    config.data = ml_collections.ConfigDict()
    config.data.source = "jsonl"  # any record source (see data/sources.py)
    config.data.path = ""
    config.data.split = "train"  # tfds only
    config.data.tfds_data_dir = ""  # tfds only
    config.data.tfds_fields = ""  # tfds only: record_field=feature overrides
    config.data.image_root = ""  # where relative image paths point; empty = next to the records
    config.data.on_bad_record = "error"  # error | skip
    config.convert = ml_collections.ConfigDict()
    config.convert.output = ""  # a folder that does not exist yet
    config.convert.num_shards = 1
    config.convert.overwrite = False
    return config
