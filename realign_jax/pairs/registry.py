"""The preference builders by `pairs.builder` name: the one list `mode=build_pairs`
(pairs/build.py) and the pipeline (pipeline.py) read.

Each entry names its build_pairs config (pairs/pair_configs.py), whether it generates with a
VLM (then `model.path` is required), and where its builder function lives; the function is
imported only when it runs (the model-based builders bring the generation stack with them).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from realign_jax.pairs import pair_configs

Builder = Callable[[Any, Sequence[dict[str, Any]], str, str], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class BuilderSpec:
    config: Callable[[], ml_collections.ConfigDict]  # the builder's build_pairs config, its defaults
    needs_model: bool  # it generates with a VLM: model.path is required
    function: str  # "module:attribute" of its (config, records, image_root, output) -> counts

    def load(self) -> Builder:
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)


BUILDERS: dict[str, BuilderSpec] = {
    "povid": BuilderSpec(pair_configs.povid_pairs_config, False, "realign_jax.pairs.povid:build_povid"),
    "realign": BuilderSpec(pair_configs.realign_pairs_config, True, "realign_jax.pairs.realign:build_realign"),
    "bdhs": BuilderSpec(pair_configs.bdhs_pairs_config, True, "realign_jax.pairs.bdhs:build_bdhs"),
}
