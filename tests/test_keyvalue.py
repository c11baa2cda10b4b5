"""The one `k=v,k=v` parser (data/keyvalue.py) and the four fields that read through it."""

import os
import sys

import pytest

from realign_jax.data.keyvalue import parse_key_values
from realign_jax.data.sources import _tfds
from realign_jax.settings.sections import OptimConfig
from realign_jax.settings.sections import RecordSource, parse_rules as _parse_rules

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
from common import parse_arg  # noqa: E402


def test_pairs_in_order_stripped_empty_items_skipped():
    assert parse_key_values(" b = 2 ,, a=1,", "{item!r}") == [("b", "2"), ("a", "1")]
    assert parse_key_values("", "{item!r}") == parse_key_values(None, "{item!r}") == []
    assert parse_key_values("x=a=b", "{item!r}") == [("x", "a=b")]
    assert parse_key_values("x=a=b", "{item!r}", at_last=True) == [("x=a", "b")]
    with pytest.raises(ValueError, match=r"^bad 'nokey' here$"):
        parse_key_values("a=1,nokey", "bad {item!r} here")


def test_the_fields_keep_their_messages():
    assert parse_arg("loss=rdpo,lora=0") == {"loss": "rdpo", "lora": "0"}
    with pytest.raises(ValueError, match=r"config argument 'lora' is not key=value"):
        parse_arg("loss=rdpo,lora")
    assert _parse_rules("embed=fsdp,mlp=fsdp+tensor,vocab=") == (("embed", "fsdp"), ("mlp", ("fsdp", "tensor")),
                                                                 ("vocab", None))
    with pytest.raises(ValueError, match=r"mesh.rules item 'embed' is not 'logical_axis=mesh_axis'"):
        _parse_rules("embed")
    assert OptimConfig.parse_groups(r"^a(?=b)=1e-3, ^projector\.=2e-4") == ((r"^a(?=b)", 1e-3), (r"^projector\.", 2e-4))
    for bad in ("projector", "projector=fast", "(=1e-3"):
        with pytest.raises(ValueError, match=rf"optim.lr_groups item {bad!r} is not 'regex=learning_rate'".replace("(", r"\(")):
            OptimConfig.parse_groups(bad)
    with pytest.raises(ValueError, match=r"data.tfds_fields: 'question' is not record_field=feature"):
        _tfds(RecordSource(tfds_fields="image=img,question", path="x"))
