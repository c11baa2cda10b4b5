"""The package's rooms keep their import arrows (docs/design.md, "Rooms and who may import whom").

Every module of realign_jax is parsed (not imported) and each of its imports resolved: module
level or inside a function, absolute or relative (`from . import x`, `from ..data import y`),
and the "realign_jax.pkg.module:attr" strings a registry imports by name. Each module belongs
to the room of its top folder or top-level file; an import across rooms must be one the table
in docs/design.md allows and none of its "Never allowed" bullets forbids. The table is read
from the document itself, so the two cannot drift; a table the parser cannot read fails.

One rule the table does not carry: the pair builders do not import each other
(`BUILDER_MODULES`); what two of them share lives in a neutral module of pairs/.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "realign_jax"
DESIGN = ROOT / "docs" / "design.md"
SECTION = "## Rooms and who may import whom"
MAY_IMPORT = "may import"
EVERY_ROOM, NOTHING = "every room", "nothing in the package"

# Each builder's own modules (pairs/registry.py names the builders).
BUILDER_MODULES: dict[str, tuple[str, ...]] = {
    "realign": ("realign_jax.pairs.realign", "realign_jax.pairs.masking"),
    "povid": ("realign_jax.pairs.povid", "realign_jax.pairs.injection"),
    "bdhs": ("realign_jax.pairs.bdhs",),
}

_CODE = re.compile(r"`([^`]+)`")
_MODULE_STRING = re.compile(PACKAGE + r"(?:\.[A-Za-z_]\w*)+(?::\w+)?")


class TableError(ValueError):
    """docs/design.md's rooms table is missing or cannot be read."""


@dataclasses.dataclass(frozen=True)
class Rules:
    rooms: dict[str, str]  # "realign_jax.train" or "realign_jax.main" -> room name (the table's first cell)
    allowed: dict[str, frozenset[str]]  # room -> rooms it may import
    never: tuple[tuple[str | None, str, str], ...]  # (importer prefix or None for anything, target prefix, bullet)

    def room_of(self, module: str) -> str | None:
        for prefix, room in self.rooms.items():
            if _under(module, prefix):
                return room
        return None


@dataclasses.dataclass(frozen=True)
class Edge:
    importer: str
    target: str
    where: str  # "path:line"


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _prefix(name: str, row: str) -> str:
    """`train/` -> realign_jax.train, `files.py` -> realign_jax.files."""
    if re.fullmatch(r"\w+/", name):
        return f"{PACKAGE}.{name[:-1]}"
    if re.fullmatch(r"\w+\.py", name):
        return f"{PACKAGE}.{name[:-3]}"
    raise TableError(f"{DESIGN.name} rooms table, row {row!r}: {name!r} is neither a folder (`name/`) nor a file "
                     "(`name.py`)")


def parse_rules(text: str) -> Rules:
    """The rooms table and the "Never allowed" bullets of the section; TableError when unreadable."""
    if SECTION not in text:
        raise TableError(f"{DESIGN.name} has no {SECTION!r} section")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("|")), None)
    if start is None:
        raise TableError(f"{DESIGN.name} {SECTION!r}: no table")
    header = [c.lower() for c in _cells(lines[start])]
    if len(header) != 3 or header[0] != "room" or header[2] != MAY_IMPORT:
        raise TableError(f"{DESIGN.name} rooms table: header must be | room | holds | {MAY_IMPORT} |, got {header}")
    if start + 1 >= len(lines) or not re.fullmatch(r"\|[-:| ]*-[-:| ]*\|", lines[start + 1].strip()):
        raise TableError(f"{DESIGN.name} rooms table: the header is not followed by a |---| line")
    rows = []
    for line in lines[start + 2:]:
        if not line.lstrip().startswith("|"):
            break
        cells = _cells(line)
        if len(cells) != 3:
            raise TableError(f"{DESIGN.name} rooms table: row {line.strip()!r} has {len(cells)} cells, not 3")
        rows.append(cells)
    if not rows:
        raise TableError(f"{DESIGN.name} rooms table has no rows")

    rooms: dict[str, str] = {}
    names: dict[str, str] = {}  # `objectives`, `files`, `main` -> prefix
    rows = [[first.replace("`", ""), holds, may] for first, holds, may in rows]  # rooms by their plain names
    for first, _, _ in rows:
        members = [m.strip() for m in first.split(",")]
        for member in members:
            prefix = _prefix(member, first)
            if prefix in rooms:
                raise TableError(f"{DESIGN.name} rooms table: {member!r} is in two rows")
            rooms[prefix] = first
            names[prefix.removeprefix(PACKAGE + ".")] = prefix

    def resolve(token: str, context: str) -> str:
        if token not in names:
            raise TableError(f"{DESIGN.name} {context}: {token!r} is no room of the table (rooms: {sorted(names)})")
        return names[token]

    allowed: dict[str, frozenset[str]] = {}
    for first, _, may in rows:
        tokens = _CODE.findall(may)
        if tokens:
            allowed[first] = frozenset(rooms[resolve(t, f"row {first!r}")] for t in tokens)
        elif may.lower() == EVERY_ROOM:
            allowed[first] = frozenset(rooms.values())
        elif may.lower() == NOTHING:
            allowed[first] = frozenset()
        else:
            raise TableError(f"{DESIGN.name} rooms table, row {first!r}: {MAY_IMPORT!r} must list `rooms`, or say "
                             f"{EVERY_ROOM!r} or {NOTHING!r}; got {may!r}")

    never = []
    bullets = section.split("Never allowed:", 1)
    if len(bullets) != 2:
        raise TableError(f"{DESIGN.name} {SECTION!r}: no 'Never allowed:' list")
    for line in bullets[1].strip().splitlines():
        if not line.startswith("- "):
            break
        rule = line[2:].split(":", 1)[0]  # "`models` importing `train`, `data` or `objectives`"
        if " importing " not in rule:
            raise TableError(f"{DESIGN.name} 'Never allowed' bullet {line!r}: expected '<who> importing <what>'")
        who, what = rule.split(" importing ", 1)
        importer = None if who.strip() == "anything" else resolve(_one(who, line), f"bullet {line!r}")
        targets = [resolve(t, f"bullet {line!r}") for t in _CODE.findall(what)]
        if not targets:
            raise TableError(f"{DESIGN.name} 'Never allowed' bullet {line!r} names nothing it forbids")
        never.extend((importer, target, line[2:].strip()) for target in targets)
    if not never:
        raise TableError(f"{DESIGN.name} {SECTION!r}: the 'Never allowed' list is empty")
    rules = Rules(rooms, allowed, tuple(never))
    for importer, target, bullet in rules.never:  # a bullet the table contradicts is a broken document
        if importer is not None and rooms[target] != rooms[importer] and rooms[target] in allowed[rooms[importer]]:
            raise TableError(f"{DESIGN.name}: the table lets {rooms[importer]} import {rooms[target]}, but "
                             f"'Never allowed' says {bullet!r}")
    return rules


def _one(text: str, line: str) -> str:
    tokens = _CODE.findall(text)
    if len(tokens) != 1:
        raise TableError(f"{DESIGN.name} 'Never allowed' bullet {line!r}: name one `room` before 'importing'")
    return tokens[0]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_edges(root: Path) -> tuple[list[str], list[Edge]]:
    """Every module under root/realign_jax and every import of the package it makes."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(path, root) for path in files}
    edges = []
    for path in files:
        module = module_name(path, root)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        where = path.relative_to(root)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(node, package, modules):
                if _under(target, PACKAGE) and target != module:
                    edges.append(Edge(module, target, f"{where}:{node.lineno}"))
    return sorted(modules), list(dict.fromkeys(edges))  # `from x import a, b`: one arrow


def _targets(node: ast.AST, package: str, modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        # `from realign_jax.data import loader` imports the module realign_jax.data.loader
        return [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.fullmatch(node.value):
        return [node.value.partition(":")[0]]  # "realign_jax.pairs.povid:build_povid", imported by name
    return []


def forbidden(modules: list[str], edges: list[Edge], rules: Rules) -> list[str]:
    """One line per import the rules forbid (and per module in no room)."""
    problems = [f"{m}: in no room of {DESIGN.name}'s table" for m in modules
                if m != PACKAGE and rules.room_of(m) is None]
    builder_of = {m: b for b, ms in BUILDER_MODULES.items() for m in ms}
    for edge in edges:
        arrow = f"{edge.importer} -> {edge.target} ({edge.where})"
        source, target = rules.room_of(edge.importer), rules.room_of(edge.target)
        if edge.importer == PACKAGE:
            problems.append(f"{arrow}: the package's __init__ imports nothing of the package")
            continue
        if source is None or target is None:
            continue  # reported above (or the target is the bare package)
        if source != target and target not in rules.allowed[source]:
            problems.append(f"{arrow}: {source} may not import {target}")
        for importer, prefix, bullet in rules.never:
            if _under(edge.target, prefix) and (importer is None or _under(edge.importer, importer)):
                problems.append(f"{arrow}: never allowed, {bullet}")
        mine, theirs = builder_of.get(edge.importer), builder_of.get(edge.target)
        if mine and theirs and mine != theirs:
            problems.append(f"{arrow}: builder {mine} imports builder {theirs} (share through a neutral pairs/ module)")
    return problems


@pytest.fixture(scope="module")
def rules() -> Rules:
    return parse_rules(DESIGN.read_text(encoding="utf-8"))


def test_every_import_keeps_to_the_rooms_table(rules: Rules) -> None:
    modules, edges = package_edges(ROOT)
    assert len(modules) > 50 and len(edges) > 100  # the walk found the package
    for members in BUILDER_MODULES.values():
        assert set(members) <= set(modules), f"BUILDER_MODULES names a module that is gone: {members}"
    problems = forbidden(modules, edges, rules)
    assert not problems, "forbidden imports:\n  " + "\n  ".join(problems)


def test_a_forbidden_arrow_is_reported(rules: Rules, tmp_path: Path) -> None:
    """An injected edge (data -> train), and a module written here that imports across rooms by
    a relative import inside a function and by a registry string: each one is named."""
    modules, edges = package_edges(ROOT)
    injected = Edge("realign_jax.data.records", "realign_jax.train.loop", "injected")
    problems = forbidden(modules, [*edges, injected], rules)
    assert any(p.startswith("realign_jax.data.records -> realign_jax.train.loop (injected): data/ may not "
                            "import train/") for p in problems), problems
    assert any("never allowed, `data` importing `train`" in p for p in problems), problems

    for folder in ("data", "train", "models", "pairs"):
        (tmp_path / PACKAGE / folder).mkdir(parents=True)
        (tmp_path / PACKAGE / folder / "__init__.py").write_text("")
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (tmp_path / PACKAGE / "train" / "loop.py").write_text("")
    (tmp_path / PACKAGE / "pairs" / "bdhs.py").write_text("")
    (tmp_path / PACKAGE / "models" / "leaky.py").write_text(
        "def f():\n    from ..train import loop\n    from . import sibling\n"
        "BUILDER = 'realign_jax.pairs.bdhs:build_bdhs'\n")
    (tmp_path / PACKAGE / "models" / "sibling.py").write_text("")
    modules, edges = package_edges(tmp_path)
    problems = forbidden(modules, edges, rules)
    assert {p.split(":")[0] for p in problems} >= {
        "realign_jax.models.leaky -> realign_jax.train.loop (realign_jax/models/leaky.py",
        "realign_jax.models.leaky -> realign_jax.pairs.bdhs (realign_jax/models/leaky.py"}, problems
    assert not any("sibling" in p for p in problems), problems  # inside its room


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace(SECTION, "## Rooms"), "no '## Rooms and who may import whom' section"),
    (lambda t: t.replace("| may import |", "| imports today |"), "header must be"),
    (lambda t: t.replace("| `data`, `files` |", "| `data`, `filez` |"), "'filez' is no room"),
    (lambda t: t.replace("| nothing in the package |", "| hardly anything |", 1), "must list `rooms`"),
    (lambda t: t.replace("Never allowed:", "Never:"), "no 'Never allowed:' list"),
    (lambda t: t.replace("- `models` importing", "- `modelz` importing"), "'modelz' is no room"),
])
def test_a_broken_table_fails_loudly(edit, message: str) -> None:
    text = DESIGN.read_text(encoding="utf-8")
    broken = edit(text)
    assert broken != text, "the edit no longer matches docs/design.md: update this test's edits"
    with pytest.raises(TableError, match=re.escape(message)):
        parse_rules(broken)
