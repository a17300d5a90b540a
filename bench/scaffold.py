"""``bench new-plugin NAME [--kind learner|suite]``: a ready-to-install plugin package to start from."""
from __future__ import annotations

import re
import string
from importlib import resources
from pathlib import Path

from bench.errors import BenchError
from bench.plugins import NAME_PATTERN

FILES = {  # per kind: template -> path in the new package ({module} is the import name)
    "learner": {
        "pyproject.toml.tmpl": "pyproject.toml",
        "README.md.tmpl": "README.md",
        "plugin.py.tmpl": "src/{module}/plugin.py",
        "learner.py.tmpl": "src/{module}/learner.py",
        "test_conformance.py.tmpl": "tests/test_conformance.py",
    },
    "suite": {
        "pyproject.toml.tmpl": "pyproject.toml",
        "suite_README.md.tmpl": "README.md",
        "suite_plugin.py.tmpl": "src/{module}/plugin.py",
        "suite.py.tmpl": "src/{module}/suite.py",
        "suite_test_conformance.py.tmpl": "tests/test_conformance.py",
    },
}
KINDS = tuple(FILES)


def new_plugin(name: str, parent: Path, kind: str = "learner") -> Path:
    """Write the package ``metabench-NAME`` with a working ``kind`` (learner or suite) plugin into
    ``parent/metabench-NAME``; return its folder."""
    if kind not in FILES:
        raise BenchError(f"plugin kind {kind!r}: one of {', '.join(KINDS)}")
    if not NAME_PATTERN.match(name) or not re.match(r"^[a-z][a-z0-9_-]*$", name):
        raise BenchError(f"plugin name {name!r}: use lower-case letters, digits, '-' and '_', starting with a letter")
    module = "metabench_" + name.replace("-", "_")
    values = {"name": name, "kind": kind, "module": module, "distribution": f"metabench-{name}",
              "cls": "".join(part.capitalize() for part in re.split(r"[-_]", name))}
    root = parent / values["distribution"]
    if root.exists():
        raise BenchError(f"{root} already exists; choose another name or folder")
    templates = resources.files("bench") / "templates" / "plugin"
    for template, target in FILES[kind].items():
        path = root / target.format(module=module)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(string.Template(templates.joinpath(template).read_text()).substitute(values))
    (root / "src" / module / "__init__.py").write_text(f'"""The metabench plugin {name}."""\n')
    return root
