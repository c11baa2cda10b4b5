"""Every own-data example of the docs runs as written on a clean clone.

The bash blocks of README.md, docs/*.md and examples/**/README.md that use `examples/own_data`
or the tiny-checkpoint command are run from the repository root with `bash -e`, continuation
lines joined, the tiny-checkpoint command first and once (each page repeats it to read on its
own). Each block must exit 0 and print, for each of its commands, the key line of that
command's mode. Paths under /tmp/ move into the test's temporary folder, so every run starts as
on a fresh machine and two runs do not meet. A doc naming a path under examples/ that does not
exist fails, and so does finding no examples.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from collections import Counter

import pytest

from test_docs import FENCE, INLINE_CODE, LINK, load_config, shell_blocks

ROOT = pathlib.Path(__file__).resolve().parent.parent
SETUP = "realign_jax.tiny_checkpoint"
USES_EXAMPLES = re.compile(r"examples/own_data|" + re.escape(SETUP))
EXAMPLE_PATH = re.compile(r"(?:(?<=\.\./)|(?<![\w./-]))(examples/[\w./-]*[\w/])")
TMP = re.compile(r"(?<![\w./-])/tmp/")
KEY_LINES = {  # what each mode prints when it worked (realign_jax/main.py and the modules it calls)
    "setup": r"^wrote a random tiny LLaVA with a tokenizer to ",
    "inspect": r"^jsonl \S+: \d+ records; objective ",
    "train": r"^step [1-9]\d*: loss=\d",  # a finite loss
    "sft": r"^step [1-9]\d*: loss=\d",
    "precompute": r"^precompute: reference log-probs of [1-9]\d* records",
    "convert": r"^convert: [1-9]\d* records -> ",
    "generate": r"^outputs:\s+\S+generations\.jsonl$",
    "build_pairs": r"^\w+: [1-9]\d* pairs kept",  # some pairs, not none
    "eval": r"^answers and results\.json: ",
    "pipeline": r"^results\.json, curves\.png: ",
}
MIN_BLOCKS = 8  # the docs' own-data blocks today; fewer means the extraction broke or examples went


def doc_paths() -> list[pathlib.Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("README.md"))]


def commands(block: str) -> list[str]:
    """The block's command lines, continuation lines joined, comment lines dropped."""
    lines = (line.strip() for line in block.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def examples() -> list[tuple[str, list[str]]]:
    """(where, commands) of every bash block that uses the examples, in the docs' order."""
    found = []
    for path in doc_paths():
        text = path.read_text(encoding="utf-8")
        for block in shell_blocks(text):
            if USES_EXAMPLES.search(block):
                line = text[: text.index(block)].count("\n") + 1
                found.append((f"{path.relative_to(ROOT)}:{line}", commands(block)))
    return found


EXAMPLES = examples()
SETUP_COMMAND = next((c for _, cs in EXAMPLES for c in cs if SETUP in c), None)


def mode_of(command: str) -> str | None:
    """The mode a command runs: the tiny-checkpoint setup, or its config's `mode` (or override)."""
    if SETUP in command:
        return "setup"
    config = re.search(r"--config=(configs/\w+\.py)(?::(\S+))?", command)
    if "realign_jax.main" not in command or config is None:
        return None
    override = re.search(r"--config\.mode=(\w+)", command)
    return override.group(1) if override else load_config(config.group(1), config.group(2)).mode


def run_script(lines: list[str], tmp: pathlib.Path) -> str:
    """Run `lines` as one `bash -e` script from the repository root; its output, or a failure
    that shows it."""
    env = dict(os.environ)
    # conftest.py gives this process 8 fake devices; a user's shell has one.
    env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # `python` is this venv's
    script = "\n".join(TMP.sub(f"{tmp}/", line) for line in lines)
    done = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"exit {done.returncode}:\n{script}\n--- output (last 4000 characters) ---\n" \
                                 f"{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> pathlib.Path:
    """The stand-in for /tmp, with the tiny checkpoint written into it by the docs' own command."""
    folder = tmp_path_factory.mktemp("doc_examples")
    assert SETUP_COMMAND is not None, f"no doc example runs `python -m {SETUP}`"
    assert re.search(KEY_LINES["setup"], run_script([SETUP_COMMAND], folder), re.M)
    return folder


def test_doc_examples_are_found() -> None:
    assert len(EXAMPLES) >= MIN_BLOCKS, f"only {len(EXAMPLES)} own-data example blocks found: {EXAMPLES}"
    assert SETUP_COMMAND is not None


def code_and_links(text: str) -> str:
    """What a doc names paths in: code blocks, inline code and link targets (prose says
    "examples/s" for a rate)."""
    outside = FENCE.sub("", text)
    return "\n".join([m.group(0) for m in FENCE.finditer(text)] + INLINE_CODE.findall(outside)
                     + [target for _, target in LINK.findall(INLINE_CODE.sub("", outside))])


def test_examples_paths_named_in_the_docs_exist() -> None:
    missing = sorted({f"{path.relative_to(ROOT)}: {name}" for path in doc_paths()
                      for name in EXAMPLE_PATH.findall(code_and_links(path.read_text(encoding="utf-8")))
                      if not (ROOT / name.rstrip("./")).exists()})
    assert not missing, "paths under examples/ named in the docs that do not exist:\n" + "\n".join(missing)


@pytest.mark.slow
@pytest.mark.parametrize("where, lines", EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_doc_example_runs_as_written(where: str, lines: list[str], tmp: pathlib.Path) -> None:
    lines = [line for line in lines if line != SETUP_COMMAND]  # the fixture ran it
    if not lines:
        return
    output = run_script(lines, tmp)
    wanted = Counter(mode for mode in map(mode_of, lines) if mode is not None)
    for mode, count in wanted.items():
        printed = len(re.findall(KEY_LINES[mode], output, re.M))
        assert printed >= count, f"{where}: {count} {mode} command(s), {printed} printed /{KEY_LINES[mode]}/:\n" \
                                 f"{output[-4000:]}"


def test_checks_catch_what_they_should() -> None:
    assert commands("python a.py \\\n    --b=1\n# c\n\nrun\n") == ["python a.py      --b=1", "run"]
    assert EXAMPLE_PATH.findall("see [x](../examples/a/b.md), examples/own_data/x.jsonl,examples/y and "
                                "/tmp/examples/z") == ["examples/a/b.md", "examples/own_data/x.jsonl", "examples/y"]
    assert EXAMPLE_PATH.findall(code_and_links("10 examples/s, `examples/a`, [b](../examples/b.md)\n"
                                              "```bash\nrun examples/c\n```\n")) == ["examples/c", "examples/a",
                                                                                    "examples/b.md"]
    assert TMP.sub("/T/", "--workdir=/tmp/a /tmp/b x/tmp/c") == "--workdir=/T/a /T/b x/tmp/c"
    assert mode_of("python -m realign_jax.main --config=configs/train_llava.py:loss=rdpo --config.mode=inspect") \
        == "inspect"
    assert mode_of("python -m realign_jax.main --config=configs/realign_pairs.py --workdir=/tmp/x") == "build_pairs"
    assert mode_of("W=1") is None
