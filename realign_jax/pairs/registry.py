"""The preference builders by `pairs.builder` name: where each builder function lives.

The names and each builder's keys are its settings section (settings/sections.py
`PAIRS_SECTIONS`, which also says whether it generates with a VLM); the function is imported
only when it runs (the model-based builders bring the generation stack with them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from realign_jax.settings.sections import PAIRS_SECTIONS

Builder = Callable[[Any, Sequence[dict[str, Any]], str, str], dict[str, Any]]

# pairs.builder -> "module:attribute" of its (settings, records, image_root, output) -> counts
FUNCTIONS = {
    "povid": "realign_jax.pairs.povid:build_povid",
    "realign": "realign_jax.pairs.realign:build_realign",
    "bdhs": "realign_jax.pairs.bdhs:build_bdhs",
}
assert set(FUNCTIONS) == set(PAIRS_SECTIONS), "every builder section needs its function, and no other"


def builder(name: str) -> Builder:
    module, _, attribute = FUNCTIONS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
