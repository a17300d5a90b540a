"""docs/writing-a-plugin.md stays true: every hook and API member documented, every file shown is the fixture's."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import api, hookspecs

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "writing-a-plugin.md").read_text()
FIXTURE = ROOT / "tests" / "fixtures" / "metabench-example"
TITLED_BLOCK = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)^```$', re.MULTILINE | re.DOTALL)


def hook_functions():
    return [value for name, value in vars(hookspecs).items()
            if callable(value) and hasattr(value, f"{hookspecs.PROJECT}_spec")]


def section(title: str) -> str:
    start = GUIDE.index(f"### {title}")
    end = GUIDE.find("\n### ", start + 1)
    return GUIDE[start:end if end > 0 else None]


def test_the_hookspec_has_hooks():
    assert {hook.__name__ for hook in hook_functions()} >= {"register_learners", "register_suites"}


@pytest.mark.parametrize("hook", hook_functions(), ids=lambda hook: hook.__name__)
def test_every_hook_is_documented_with_its_signature(hook):
    annotations = dict(hook.__annotations__)
    returns = annotations.pop("return")
    signature = f"{hook.__name__}({', '.join(f'{name}: {kind}' for name, kind in annotations.items())}) -> {returns}"
    assert f"`{signature}`" in section("Hooks"), signature


@pytest.mark.parametrize(("cls", "title"), [(api.Learner, "`bench.api.Learner`"), (api.TaskSuite, "`bench.api.TaskSuite`"),
                                            (api.MetaTrainContext, "`bench.api.MetaTrainContext`"),
                                            (api.MetaGradient, "`bench.api.MetaGradient`"),
                                            (api.Executor, "`bench.api.Executor`")])
def test_every_public_api_member_is_documented(cls, title):
    members = {name for name in dir(cls) if not name.startswith("_")} | set(cls.__annotations__)
    text = section(title)
    missing = sorted(name for name in members if f"`{name}" not in text and f" `{name}`" not in text
                     and not re.search(rf"`[^`]*\b{name}\b[^`]*`", text))
    assert not missing, f"undocumented in docs/writing-a-plugin.md, section {title}: {missing}"


def test_every_file_shown_is_the_fixture_packages_file():
    blocks = dict(TITLED_BLOCK.findall(GUIDE))
    fixture_files = {str(path.relative_to(FIXTURE)) for path in FIXTURE.rglob("*")
                     if path.is_file() and "__pycache__" not in path.parts and "egg-info" not in str(path)}
    assert set(blocks) == fixture_files
    for name, text in blocks.items():
        assert text == (FIXTURE / name).read_text(), f"docs/writing-a-plugin.md shows another {name} than the fixture"


def test_readme_links_the_guide():
    assert "(docs/writing-a-plugin.md)" in (ROOT / "README.md").read_text()
