"""The documentation stays inside the repository and its links and commands stay true.

- no tracked text file refers to notes kept outside the repository;
- every relative markdown link in README.md and docs/*.md points to a tracked file, and an
  `#anchor` on it to one of that file's headings;
- the code's citations of docs/methods.md sections and docs/design.md headings find them;
- README.md's test command is the command CI runs (.ci/run's last line), character for character;
- every repository path the docs name exists, every `--config=configs/X.py[:ARG]` in a documented
  command loads and has the `--config.key`s the command overrides, every `python -m realign_jax.X`
  and `python benchmarks/X.py` command names a module and flags that exist;
- every commit the docs cite as where a figure was measured is in the history;
- the docs speak of the software, not of who ran it where (no "session", no machine "lent").
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "configs"))  # configs/*.py import configs/common.py, as realign_jax.cli arranges
TEXT_SUFFIXES = (".md", ".py", ".sh", ".sbatch", ".toml")

# Built from pieces so that this file does not match itself.
_OUTSIDE = "|".join((
    r"\.\./" + "shared",  # a folder next to the checkout
    "shared/" + "(?:METH" + "ODS|DESI" + r"GN)\.md",  # the private notes by their path
    r"(?<![\w/.-])(?:METH" + "ODS|DESI" + r"GN)\.md",  # ... or by their bare names
))
OUTSIDE = re.compile(_OUTSIDE)

LINK = re.compile(r"(?<!!)\[([^\]\n]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout: {error}")
    return [line for line in out.splitlines() if line]


def doc_files() -> list[pathlib.Path]:
    docs = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    return [path for path in docs if path.exists()]


def prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (links there are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading anchors on its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def test_no_reference_outside_the_repository():
    offenders = []
    docs = [path.relative_to(ROOT).as_posix() for path in doc_files()]  # checked before they are committed too
    for name in sorted(set(tracked_files()) | set(docs)):
        if not name.endswith(TEXT_SUFFIXES):
            continue
        path = ROOT / name
        if not path.is_file():  # deleted in the work tree, not yet in the index
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not offenders, "files outside the repository are referred to:\n" + "\n".join(offenders)


def test_outside_pattern_catches_what_it_should():
    catch = ["see ../" + "shared/notes", "the shared/" + "METH" + "ODS.md page", "DESI" + "GN.md section 2"]
    keep = ["--workdir=/shared/runs/dpo", "docs/methods.md section 2", "docs/design.md", "README.md"]
    assert all(OUTSIDE.search(text) for text in catch)
    assert not any(OUTSIDE.search(text) for text in keep)


def test_relative_links_point_to_files_in_the_repository():
    tracked = set(tracked_files())
    bad = []
    for doc in doc_files():
        for text, target in LINK.findall(prose(doc.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            where = doc if not file_part else (doc.parent / file_part).resolve()
            label = f"{doc.relative_to(ROOT)}: [{text}]({target})"
            try:
                relative = where.relative_to(ROOT).as_posix()
            except ValueError:
                bad.append(f"{label}: outside the repository")
                continue
            if not where.exists():
                bad.append(f"{label}: {relative} does not exist")
            elif where.is_file() and relative not in tracked and where not in doc_files():
                bad.append(f"{label}: {relative} is not tracked by git")
            elif anchor and where.suffix == ".md" and anchor not in anchors(where):
                bad.append(f"{label}: no heading with anchor #{anchor} in {relative}")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_cited_sections_exist():
    """Docstrings cite docs/methods.md by section number (N, N-M or §N) and docs/design.md by a quoted heading."""
    methods = ROOT / "docs" / "methods.md"
    design = ROOT / "docs" / "design.md"
    numbered = {int(m) for m in re.findall(r"^## (\d+)\.", methods.read_text(encoding="utf-8"), re.M)}
    design_headings = {title.strip() for _, title in HEADING.findall(design.read_text(encoding="utf-8"))}
    missing = []
    for name in tracked_files():
        if not name.endswith(TEXT_SUFFIXES) or not (ROOT / name).is_file():
            continue
        text = (ROOT / name).read_text(encoding="utf-8", errors="replace")
        for first, last in re.findall(r"docs/methods\.md(?:,)?\s+(?:sections?\s+|§\s*)?(\d+)(?:\s*-\s*(\d+))?", text):
            for section in range(int(first), int(last or first) + 1):
                if section not in numbered:
                    missing.append(f"{name}: docs/methods.md section {section}")
        for title in re.findall(r"docs/design\.md,\s*\n?\s*\"([^\"]+)\"", text):
            if " ".join(title.split()) not in design_headings:
                missing.append(f'{name}: docs/design.md "{title}"')
    assert not missing, "cited but not found:\n" + "\n".join(missing)


def test_readme_test_command_is_what_ci_runs():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines() if line.strip()]
    command = ci[-1]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line.strip() for block in shell_blocks(readme) for line in block.splitlines()]
    tests = [line for line in lines if "pytest" in line and line.startswith("python3 -m venv")]
    assert tests, "README.md has no test command (python3 -m venv ... pytest) in a code block"
    assert tests == [command], f"README.md's test command {tests} differs from .ci/run's {command!r}"


# --- paths, commands, commits -------------------------------------------------------------

PATH = re.compile(r"(?<![\w/.$<~-])((?:configs|benchmarks|launch|tests|realign_jax|docs|\.ci)/[\w./-]*[\w/])")
COMMIT = re.compile(r"\bcommits?\s+([0-9a-f]{7,40})\b")
NOT_ABOUT_SOFTWARE = re.compile(r"\bsessions?\b|\blent\b", re.I)


def doc_texts() -> list[tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")) for path in doc_files()]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of each fenced code block, fences matched in order."""
    blocks, info, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if info is None:
                info, body = line[3:].strip(), []
            else:
                blocks.append((info, "\n".join(body) + "\n"))
                info = None
        elif info is not None:
            body.append(line)
    assert info is None, "a code block is not closed"
    return blocks


def shell_blocks(text: str) -> list[str]:
    return [body for info, body in code_blocks(text) if info in ("", "bash", "sh")]


def command_lines(text: str) -> list[str]:
    """The shell lines of a doc's fenced code blocks, continuation lines joined, comments cut."""
    lines = []
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def test_named_paths_exist():
    missing = []
    for name, text in doc_texts():
        for path in PATH.findall(text):
            path = path.rstrip("./")
            if any(c in path for c in "*<>") or path.endswith("-NNNNN"):
                continue
            if not (ROOT / path).exists():
                missing.append(f"{name}: {path}")
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(sorted(set(missing)))


@functools.lru_cache(maxsize=None)
def load_config(path: str, arg: str | None):
    spec = importlib.util.spec_from_file_location(f"doc_config_{abs(hash((path, arg)))}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def has_key(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return False
    return True


def test_documented_configs_load_with_their_keys():
    bad = []
    for name, text in doc_texts():
        for line in command_lines(text):
            for path, arg in re.findall(r"--config=(configs/\w+\.py)(?::(\S+))?", line):
                label = f"{name}: {path}{':' + arg if arg else ''}"
                try:
                    config = load_config(path, arg or None)
                except Exception as error:  # a config that does not load is a broken command
                    bad.append(f"{label}: {type(error).__name__}: {error}")
                    continue
                for key in re.findall(r"--config\.([\w.]+)=", line):
                    if not has_key(config, key):
                        bad.append(f"{label}: no key {key}")
    assert not bad, "documented commands that do not run:\n" + "\n".join(sorted(set(bad)))


def defined_flags(source: str) -> set[str]:
    flags = set(re.findall(r"add_argument\(\s*\"--([\w-]+)\"", source))
    flags |= set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
    return flags


def test_documented_scripts_and_modules_have_their_flags():
    bad = []
    for name, text in doc_texts():
        for line in command_lines(text):
            argv = words(line)
            for i, word in enumerate(argv):
                if word.startswith("benchmarks/") and word.endswith(".py"):
                    script = ROOT / word
                elif word == "-m" and i + 1 < len(argv) and argv[i + 1].startswith("realign_jax"):
                    module = pathlib.Path(*argv[i + 1].split("."))
                    candidates = [ROOT / module.with_suffix(".py"), ROOT / module / "__main__.py"]
                    script = next((c for c in candidates if c.exists()), None)
                    if script is None:
                        bad.append(f"{name}: no module {argv[i + 1]}")
                        continue
                    word = argv[i + 1]
                else:
                    continue
                if not script.exists():
                    bad.append(f"{name}: no script {word}")
                    continue
                known = defined_flags(script.read_text(encoding="utf-8"))
                for arg in argv[i + 1:]:
                    if arg in ("&&", "|", ";", "--"):
                        break
                    flag = re.match(r"--([\w-]+)", arg)
                    if flag and not flag.group(1).startswith("config") and flag.group(1) not in known:
                        bad.append(f"{name}: {word} has no flag --{flag.group(1)}")
    assert not bad, "documented commands with unknown scripts or flags:\n" + "\n".join(sorted(set(bad)))


def test_cited_commits_exist():
    try:
        subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout: {error}")
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
    if shallow == "true":
        pytest.skip("a shallow clone lacks the history the docs cite")
    cited, missing = 0, []
    for name, text in doc_texts():
        for commit in COMMIT.findall(text):
            cited += 1
            found = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True)
            if found.returncode:
                missing.append(f"{name}: commit {commit}")
    assert cited, "the docs cite no commit for their measured figures"
    assert not missing, "cited commits not in the history:\n" + "\n".join(missing)


def test_docs_speak_of_the_software():
    offenders = [f"{name}:{number}: {line.strip()[:120]}"
                 for name, text in doc_texts()
                 for number, line in enumerate(text.splitlines(), 1) if NOT_ABOUT_SOFTWARE.search(line)]
    assert not offenders, "the docs speak of who ran what where:\n" + "\n".join(offenders)


def test_checks_catch_what_they_should():
    assert PATH.findall("see configs/nope.py and `realign_jax/train/x.py`") == ["configs/nope.py", "realign_jax/train/x.py"]
    assert not PATH.findall("~/realign_jax/.venv and /tmp/x/tests/y")
    assert command_lines("```bash\npython a.py \\\n    --b=1  # c\n# d\n```\n") == ["python a.py      --b=1"]
    assert command_lines("```json\n{}\n```\n\n```bash\nrun\n```\n") == ["run"]
    assert COMMIT.findall("measured at commit 3114d3f, and commits abc1234") == ["3114d3f", "abc1234"]
    assert NOT_ABOUT_SOFTWARE.search("no GPU was lent to this session")
    assert defined_flags('p.add_argument("--seq-len")\nflags.DEFINE_string("topology", None)') == {"seq-len", "topology"}
