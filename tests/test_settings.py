"""The settings tree: every key declared once, configs that can only set existing keys, and
one check that names the key (realign_jax/settings/)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from realign_jax.settings import keys as settings_keys
from realign_jax.settings.__main__ import ROOTS
from realign_jax.settings.keys import to_config
from realign_jax.settings.runs import GenerateRun, load
from realign_jax.settings.sections import BdhsPairs, Generating, OnlineBdhsSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
STAGE_PREFIX = re.compile(r"^(sft\.(captions|grounding)|align\.stage\d)\.")


def _all_keys():
    for root in ROOTS.values():
        yield from settings_keys.keys(root)


def _section_classes(cls, seen=None):
    seen = set() if seen is None else seen
    for field in dataclasses.fields(cls):
        inner = settings_keys._section_type(cls, field.name)
        if inner is not None and inner not in seen:
            seen.add(inner)
            _section_classes(inner, seen)
    return seen


def declared_twice(roots) -> list:
    """Keys with more than one declaring class: by dotted name across the roots (a pipeline
    stage's `align.stage1.loss.beta` counts as `loss.beta`; `mode` is each root's own, its
    choices the root's modes), and fields a class restates from a base."""
    owners = defaultdict(set)
    for root in roots:
        for info in settings_keys.keys(root):
            name = STAGE_PREFIX.sub("", info.name)
            if name != "mode":
                owners[name].add(info.owner.__qualname__)
    found = [(name, sorted(classes)) for name, classes in owners.items() if len(classes) > 1]
    for cls in set().union(*(_section_classes(root) | {root} for root in roots)):
        for field in dataclasses.fields(cls):
            declaring = [base for base in cls.__mro__ if field.name in base.__dict__.get("__annotations__", {})]
            if len(declaring) > 1:
                found.append((f"{cls.__qualname__}.{field.name}", [b.__qualname__ for b in declaring]))
    return found


def test_every_key_is_declared_in_exactly_one_class():
    assert not declared_twice(ROOTS.values())
    assert len({STAGE_PREFIX.sub("", info.name) for info in _all_keys()}) > 150  # the whole tree, not an empty walk


@dataclasses.dataclass(frozen=True)
class Restated(Generating):
    temperature: float = settings_keys.key(1.0, "a base's key declared again")


@dataclasses.dataclass(frozen=True)
class RestatedRun(GenerateRun):
    generate: Restated = settings_keys.section(Restated, "generation")


@dataclasses.dataclass(frozen=True)
class OwnPrompt:
    prompt: str = settings_keys.key("", "a second declaration of generate.prompt")


@dataclasses.dataclass(frozen=True)
class OwnPromptRun(GenerateRun):
    generate: OwnPrompt = settings_keys.section(OwnPrompt, "generation")


def test_the_check_finds_a_key_declared_twice():
    """The check above fails on a section restating a base's key, and on two sections declaring
    the same dotted key."""
    assert "Restated.temperature" in [name for name, _ in declared_twice([RestatedRun])]
    assert ("generate.prompt", ["GenerateSettings", "OwnPrompt"]) in declared_twice([GenerateRun, OwnPromptRun])


def test_every_key_says_what_it_means():
    missing = sorted({info.name for info in _all_keys() if not info.meaning.strip()})
    assert not missing, missing


def test_no_config_dict_is_built_outside_the_settings_machinery():
    """configs/*.py and the package state values of declared keys; none builds a section of its own."""
    offenders = []
    for folder in ("realign_jax", "configs"):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                path = os.path.join(root, name)
                if name.endswith(".py") and not path.endswith(os.path.join("settings", "keys.py")):
                    with open(path, encoding="utf-8") as f:
                        if "ConfigDict(" in f.read():
                            offenders.append(os.path.relpath(path, REPO))
    assert not offenders, offenders


CONFIGS = [("train_llava", None), ("train_llava", "loss=rdpo"), ("sft_llava", None), ("sft_world", "grounding"),
           ("realign_train", None), ("povid_train", "noise"), ("bdhs_train", "online"), ("bdhs_train", "combined"), ("realign_pairs", None),
           ("bdhs_pairs", None), ("povid_pairs", None), ("eval_world", None), ("generate_llava", None),
           ("convert_data", None), ("rdpo_llava", None), ("povid_llava", None), ("mdpo_llava", None),
           ("dpo_llava", None), ("bdhs_llava", None), ("rdpo_llava_step", "7b"),
           *[("paper_recipes", f"method={m}") for m in ("realign", "povid_stage1", "povid_stage2", "mdpo", "bdhs")]]


@pytest.mark.parametrize("name,arg", CONFIGS)
def test_each_config_loads_and_a_stray_key_is_named(name, arg):
    config = importlib.import_module(name).get_config(arg)
    for dotted in ("model.path", "data.path", "convert.output", "eval.world"):  # the paths a user must give
        section, _, key = dotted.partition(".")
        if section in config and key in config[section] and config.mode != "pipeline":
            config[section][key] = "/somewhere"
    settings = load(config)
    assert load(to_config(settings)) == settings  # the ConfigDict carries every key, and only those
    section = "data" if "data" in config else "model"
    with pytest.raises(AttributeError):  # locked: a config file cannot add a key
        config[section].no_such_key = 1
    config.unlock()
    config[section].no_such_key = 1
    with pytest.raises(ValueError, match=rf"unknown config key {section}.no_such_key; {section} has: "):
        load(config)


def test_a_pipeline_stage_key_is_checked_and_named_with_its_stage():
    import rdpo_llava

    config = rdpo_llava.get_config()
    config.align.stage1.loss.vocab_chunk = 0
    with pytest.raises(ValueError, match=r"align.stage1.loss.vocab_chunk=0 must be >= 1"):
        load(config)
    config = rdpo_llava.get_config()
    config.align.stage1.model.path = "/elsewhere"
    with pytest.raises(ValueError, match="align.stage1.model.path and align.stage1.data.path are set by the pipeline"):
        load(config)


def test_bdhs_sampling_keys_are_one_declaration_named_by_their_section():
    """The builder's `pairs.rho_th` and online sampling's `online_bdhs.rho_th` are the same key
    declaration, and a bad value is reported under the section it was given in."""
    import bdhs_train

    assert {f.name for f in dataclasses.fields(OnlineBdhsSettings)} - {"every"} <= \
        {f.name for f in dataclasses.fields(BdhsPairs)}
    config = bdhs_train.get_config("online")
    config.model.path = config.data.path = "/somewhere"
    config.online_bdhs.rho_th = 1.5
    with pytest.raises(ValueError, match=r"^online_bdhs.rho_th=1.5 must be <= 1"):
        load(config)
    with pytest.raises(ValueError, match=r"^pairs.rho_th=1.5 must be <= 1"):
        BdhsPairs(rho_th=1.5)


def test_the_listing_command_prints_every_key_of_a_mode():
    result = subprocess.run([sys.executable, "-m", "realign_jax.settings", "train"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = [line.split(" = ")[0] for line in result.stdout.splitlines() if " = " in line]
    assert listed == [info.name for info in settings_keys.keys(ROOTS["train"])]
    assert "loss.beta = 0.1  # strength of the KL tie to the reference" in result.stdout


def test_paper_recipes_set_what_their_sources_say():
    """configs/paper_recipes.py: the numbers its docstring attributes to each paper or script."""
    import paper_recipes

    def settings(arg):
        config = paper_recipes.get_config(arg)
        config.model.path = "/somewhere"
        return load(config)

    realign, script = settings("method=realign"), settings("method=realign,lr=script")
    assert (realign.loss.name, realign.optim.lr, script.optim.lr) == ("rdpo", 1e-5, 1e-6)
    assert (realign.lora.rank, realign.lora.alpha, realign.lora.dropout) == (128, 256.0, 0.05)
    assert realign.optim.groups == ((r"^projector\.", 2e-5),) and realign.data.seq_len == 1048
    assert (realign.train.epochs, realign.train.batch_size, realign.data.pad_to_square) == (1.0, 32, "true")
    stage1, stage2 = settings("method=povid_stage1"), settings("method=povid_stage2")
    assert (stage1.loss.name, stage1.train.epochs, stage1.optim.lr) == ("dpo", 3.0, 1e-7)
    assert (stage2.loss.name, stage2.loss.noisy_scoring, stage2.train.epochs) == ("povid", "argmax", 1.0)
    assert "gate_proj" in stage1.lora.targets and settings("method=povid_stage2,stage2_epochs=3").train.epochs == 3
    mdpo = settings("method=mdpo")
    assert (mdpo.lora.rank, mdpo.lora.alpha, mdpo.optim.lr, mdpo.optim.warmup_ratio) == (64, 128.0, 1e-5, 0.1)
    assert (mdpo.optim.weight_decay, mdpo.optim.b2, mdpo.train.epochs, mdpo.loss.alt_image) == (0.05, 0.98, 3.0, "crop")
    assert settings("method=bdhs,beta=0.5").loss.beta == 0.5
    with pytest.raises(ValueError, match="beta= belongs to method=bdhs"):
        paper_recipes.get_config("method=realign,beta=0.5")


@pytest.mark.parametrize("changes,message", [
    ({"loss.name": "exo_pair"}, r"^loss.label_smoothing=0 with exo_pair: EXO's target"),
    ({"loss.name": "sigmoid+bco_pair+sft", "loss.weights": (0.8, 0.2)},
     r"^loss.weights=\(0.8, 0.2\) has 2 weights for the 3 losses of loss.name='sigmoid\+bco_pair\+sft'"),
    ({"loss.name": "dpo+dpo"}, r"loss.name='dpo\+dpo' names a loss twice"),
    ({"loss.name": "dpo+nope"}, r"loss.name='dpo\+nope': 'nope' is unknown; choose one of \['aot', "),
    ({"loss.name": "simpo"}, r"^loss.name='simpo' reads no reference: set reference='none'"),
    ({"loss.name": "dpo", "reference": "none"}, r"^reference='none' cannot go with loss.name='dpo'"),
    ({"loss.name": "orpo+apo_zero", "reference": "none"}, r"^reference='none' cannot go with loss.name='orpo\+apo_zero'"),
    ({"loss.name": "aot", "loss.wpo": True}, r"^loss.wpo=True cannot go with loss.name='aot': WPO weights pairs"),
])
def test_loss_combinations_are_checked_by_name(changes, message):
    import train_llava

    config = train_llava.get_config()
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition(".")
        (config[section] if section else config)[key] = value
    with pytest.raises(ValueError, match=message):
        load(config)


@pytest.mark.parametrize("name", ["simpo", "orpo", "cpo", "sigmoid+bco_pair+sft", "exo_pair"])
def test_the_new_losses_load_with_their_reference_rule(name):
    import train_llava

    config = train_llava.get_config()
    config.loss.name = name
    config.loss.label_smoothing = 1e-3 if name == "exo_pair" else 0.0
    if name in ("simpo", "orpo", "cpo"):
        config.reference = "none"
    assert load(config).loss.name == name
