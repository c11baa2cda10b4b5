"""The settings machinery: a section is a frozen dataclass whose fields are config keys.

Each field is declared once with `key(default, meaning, ...)` (or, for a sub-section,
`section(cls, meaning)`), so its default, its one-line meaning and its simple checks (a
choice list, a least / greatest value) live together. `to_config` turns a tree of sections
into the locked `ml_collections.ConfigDict` that configs/*.py edit and `--config.x=y`
overrides; `load` turns such a ConfigDict back into the typed tree, refusing unknown keys and
values of the wrong type by their dotted name and running every check before anything is built.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import ml_collections

S = TypeVar("S")
MEANING = "meaning"


def key(default: Any, meaning: str, *, choices: tuple[Any, ...] | None = None, least: float | None = None,
        most: float | None = None, above: float | None = None) -> Any:
    """A config key: its default, what it means (one line) and the checks `load` runs on it
    (`least`/`most` inclusive, `above` exclusive)."""
    return dataclasses.field(default=default, metadata={MEANING: meaning, "choices": choices, "least": least,
                                                         "most": most, "above": above})


def section(cls: type, meaning: str) -> Any:
    """A sub-section whose keys are `cls`'s fields."""
    return dataclasses.field(default_factory=cls, metadata={MEANING: meaning})


def optional_section(meaning: str) -> Any:
    """A sub-section only some configs have (`None` when absent, e.g. `world` of an own-data run)."""
    return dataclasses.field(default=None, metadata={MEANING: meaning})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(cls: type, name: str) -> type | None:
    """The dataclass a field holds (also through `X | None`), or None for a plain value."""
    hint = _hints(cls)[name]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    classes = [t for t in options if dataclasses.is_dataclass(t)]
    return classes[0] if classes else None


def _value_type(cls: type, name: str) -> type:
    hint = _hints(cls)[name]
    return typing.get_origin(hint) or hint


def _present(settings: Any) -> Iterator[tuple[str, Any]]:
    """(name, value) of each field, optional sections left out when absent."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is None and _section_type(type(settings), field.name) is not None:
            continue
        yield field.name, value


def to_config(settings: Any) -> ml_collections.ConfigDict:
    """Sections -> a locked ConfigDict of the same keys (absent optional sections left out):
    what a configs/*.py `get_config` returns, so a config can only set keys that exist."""
    config = ml_collections.ConfigDict({name: to_config(value) if dataclasses.is_dataclass(value) else value
                                        for name, value in _present(settings)})
    config.lock()
    return config


def as_dict(settings: Any) -> dict[str, Any]:
    """Sections -> plain nested dicts (what a work dir records of the run)."""
    return {name: as_dict(value) if dataclasses.is_dataclass(value) else value for name, value in _present(settings)}


def _checked_value(cls: type, field: dataclasses.Field, value: Any, name: str) -> Any:
    wanted = _value_type(cls, field.name)
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif wanted is tuple and isinstance(value, list):
        value = tuple(value)
    if wanted in (int, float) and isinstance(value, bool) or wanted in (str, int, float, bool, tuple) \
            and not isinstance(value, wanted):
        raise ValueError(f"{name}={value!r} must be a {wanted.__name__}")
    meta = field.metadata
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ValueError(f"{name}={value!r}: choose one of {meta['choices']}")
    if meta.get("least") is not None and value < meta["least"]:
        raise ValueError(f"{name}={value} must be >= {meta['least']}")
    if meta.get("most") is not None and value > meta["most"]:
        raise ValueError(f"{name}={value} must be <= {meta['most']}")
    if meta.get("above") is not None and value <= meta["above"]:
        raise ValueError(f"{name}={value} must be " + ("positive" if meta["above"] == 0 else f"> {meta['above']}"))
    return value


def check_fields(settings: Any, prefix: str) -> None:
    """Each plain key's own checks (choices, least / greatest), for a section built in code (the
    samplers' tests build theirs) as `load` runs them for one read from a config."""
    for field in dataclasses.fields(settings):
        if _section_type(type(settings), field.name) is None:
            _checked_value(type(settings), field, getattr(settings, field.name), prefix + field.name)


def load(cls: type[S], values: Mapping[str, Any], prefix: str = "") -> S:
    """A ConfigDict (or mapping) section -> `cls`, checked: unknown keys and wrong types are
    refused by their dotted name, then every key's own checks and the section's `check(prefix)`
    (its combinations of keys) run. Keys the config leaves out take their defaults."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(prefix + name for name in unknown)}; {prefix.rstrip('.') or 'the config'} "
                         f"has: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in values.items():
        inner = _section_type(cls, name)
        if inner is not None and value is None and fields[name].default is None:
            continue  # an optional section left out
        if inner is not None:
            if not hasattr(value, "items"):
                raise ValueError(f"{prefix}{name} must be a section of keys, got {value!r}")
            kwargs[name] = load(inner, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _checked_value(cls, fields[name], value, prefix + name)
    settings = cls(**kwargs)
    check = getattr(settings, "check", None)
    if check is not None:
        check(prefix)
    return settings


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    name: str  # dotted, e.g. "data.seq_len"
    default: Any
    meaning: str
    owner: type  # the dataclass whose own body declares the field


def _owner(cls: type, name: str) -> type:
    for base in cls.__mro__:
        if name in base.__dict__.get("__annotations__", {}):
            return base
    raise AssertionError(f"{cls.__name__}.{name} has no declaring class")


def keys(cls: type, prefix: str = "") -> Iterator[KeyInfo]:
    """Every key of a settings tree, with the class that declares it (the listing docs and
    tests read; a key declared in two classes would show two owners)."""
    for field in dataclasses.fields(cls):
        inner = _section_type(cls, field.name)
        if inner is not None:
            yield from keys(inner, f"{prefix}{field.name}.")
        else:
            yield KeyInfo(prefix + field.name, field.default, field.metadata.get(MEANING, ""),
                          _owner(cls, field.name))


def replace(settings: S, **changes: Any) -> S:
    """`dataclasses.replace`, with `section__key=value` reaching into sub-sections."""
    nested: dict[str, dict[str, Any]] = {}
    plain = {}
    for name, value in changes.items():
        head, _, rest = name.partition("__")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            plain[name] = value
    for head, inner in nested.items():
        plain[head] = replace(plain.get(head, getattr(settings, head)), **inner)
    return dataclasses.replace(settings, **plain)
