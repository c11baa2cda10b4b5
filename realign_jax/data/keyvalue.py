"""The one parser of the `key=value,key=value` strings configs take in a single field or
argument: config args (`configs/train_llava.py:loss=rdpo,lora=0`), `data.tfds_fields`,
`mesh.rules`, `optim.lr_groups`.

It lives in data/, the lowest room that uses it: data/ imports nothing else in the package and
every room that parses such strings (train/ and data/ itself) may import data/.
"""

from __future__ import annotations


def parse_key_values(text: str | None, error: str, *, at_last: bool = False) -> list[tuple[str, str]]:
    """'k=v, k=v' -> [(k, v), ...] in their order, items and both sides stripped, empty items
    skipped. An item without '=' raises ValueError(error.format(item=item)) (so `{item!r}` in
    `error` quotes it). `at_last` splits an item at its last '=' instead of its first, for keys
    that may hold one (a regex)."""
    pairs = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.rpartition("=") if at_last else item.partition("=")
        if not sep:
            raise ValueError(error.format(item=item))
        pairs.append((key.strip(), value.strip()))
    return pairs
