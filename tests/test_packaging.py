"""`pip install -e .` alone (no extras) must carry everything the package imports: the
README's first command runs on exactly that."""

from __future__ import annotations

import ast
import os
import re
import sys
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "ml_collections": "ml-collections", "orbax": "orbax-checkpoint",
                 "array_record": "array-record", "tensorboardX": "tensorboardx", "absl": "absl-py",
                 "tensorflow_datasets": "tensorflow-datasets"}
# imported only where its extra is installed (data/tfds_source.py, behind data.source=tfds)
OPTIONAL = {"tensorflow-datasets": "tfds"}
# needed without being imported by name: transformers renders chat templates with jinja2
INDIRECT = {"jinja2"}


def _imported_distributions() -> set[str]:
    names = set()
    for root, _, files in os.walk(os.path.join(REPO, "realign_jax")):
        for file in files:
            if file.endswith(".py"):
                with open(os.path.join(root, file), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names.update(alias.name.split(".")[0] for alias in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names.add(node.module.split(".")[0])
    third_party = names - set(sys.stdlib_module_names) - {"realign_jax"}
    return {DISTRIBUTIONS.get(name, name).lower() for name in third_party}


def _declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_every_imported_package_is_a_dependency_or_in_its_extra():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    declared = _declared(project["dependencies"])
    # absl-py comes with jax, grain and orbax (all declared); it is imported only for flags
    missing = {d for d in _imported_distributions() | INDIRECT if d not in declared and d not in OPTIONAL
               and d != "absl-py"}
    assert not missing, f"imported but not in pyproject's dependencies: {sorted(missing)}"
    for dist, extra in OPTIONAL.items():
        assert dist in _declared(project["optional-dependencies"][extra]), (dist, extra)
