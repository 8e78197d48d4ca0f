"""docs/plugins.md documents every hook and argument, and its code blocks run."""

from __future__ import annotations

import inspect
import logging
import re
import sys
import tomllib
import types
from pathlib import Path

import pytest

from cmrkit import hookspecs
from cmrkit.pm import CmrkitPluginManager, load_plugin_manager
from cmrkit.testing import ModelsAddedRecorder, run_quick_experiment

pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs" / "plugins.md"
EXAMPLE_PYPROJECT = REPO_ROOT / "examples" / "cmrkit-example-plugin" / "pyproject.toml"
TEST_FILE_MARK = "# test_"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
HOOK_HEADING = re.compile(r"^### (cmrkit_\w+)\((.*?)\)\s*$", re.MULTILINE)


def hookspec_functions() -> dict[str, inspect.Signature]:
    """Every hookspec in cmrkit.hookspecs with its signature."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {
        name: inspect.signature(function)
        for name, function in vars(hookspecs).items()
        if callable(function) and hasattr(function, marker)
    }


def docs_text() -> str:
    return DOCS.read_text(encoding="utf-8")


def hook_sections() -> dict[str, tuple[list[str], str]]:
    """Hook name -> (arguments in its heading, text of its section up to the next heading)."""
    text = docs_text()
    sections: dict[str, tuple[list[str], str]] = {}
    for match in HOOK_HEADING.finditer(text):
        end = re.compile(r"^#{2,3} ", re.MULTILINE).search(text, match.end())
        body = text[match.end() : end.start() if end else len(text)]
        arguments = [arg.strip() for arg in match.group(2).split(",") if arg.strip()]
        sections[match.group(1)] = (arguments, body)
    return sections


def code_blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(docs_text()) if lang == language]


def example_blocks() -> list[str]:
    """Python blocks that define plugin code (the pytest module is run separately)."""
    return [block for block in code_blocks("python") if not block.startswith(TEST_FILE_MARK)]


def test_hookspecs_found():
    assert set(hookspec_functions()) >= {"cmrkit_strategies", "cmrkit_models_added"}


@pytest.mark.parametrize("hook", sorted(hookspec_functions()))
def test_hook_documented(hook):
    assert hook in hook_sections(), f"docs/plugins.md has no '### {hook}(...)' heading"


@pytest.mark.parametrize("hook", sorted(hookspec_functions()))
def test_hook_arguments_documented(hook):
    documented, body = hook_sections().get(hook, ([], ""))
    expected = list(hookspec_functions()[hook].parameters)
    assert documented == expected
    for argument in expected:
        assert f"- `{argument}`:" in body, f"argument {argument!r} of {hook} has no bullet"


def test_no_unknown_hook_documented():
    assert set(hook_sections()) <= set(hookspec_functions())


@pytest.mark.parametrize(
    "phrase",
    [
        "CMRKIT_DISABLE_PLUGIN_AUTOLOAD",
        "CMRKIT_TRACE_HOOKS",
        '"cmrkit.plugins"',
        "plugins.<name>.*",
        "cmrkit.testing",
        "registration order",
        "order written",
    ],
)
def test_docs_mention(phrase):
    assert phrase in docs_text()


def test_toml_mirrors_example():
    documented = tomllib.loads(code_blocks("toml")[0])
    example = tomllib.loads(EXAMPLE_PYPROJECT.read_text(encoding="utf-8"))
    assert documented["project"]["entry-points"] == example["project"]["entry-points"]
    assert documented["project"]["name"] == example["project"]["name"]


def run_block(index: int, source: str) -> types.ModuleType:
    """Execute one code block as a module (so dataclass type hints resolve) and return it."""
    module = types.ModuleType(f"cmrkit_docs_block_{index}")
    sys.modules[module.__name__] = module
    exec(compile(source, f"docs/plugins.md block {index}", "exec"), module.__dict__)
    return module


@pytest.fixture()
def docs_manager(monkeypatch) -> CmrkitPluginManager:
    """cmrkit's own plugins plus one plugin per Python block of the docs."""
    manager = load_plugin_manager(autoload=False)
    for index, source in enumerate(example_blocks()):
        module = run_block(index, source)
        monkeypatch.delitem(sys.modules, module.__name__)
        plugin = module.census if hasattr(module, "census") else module
        manager.register_plugin(plugin, name=f"docs-block-{index}")
    return manager


def test_blocks_register(docs_manager):
    assert len([name for name in docs_manager.records if name.startswith("docs-block-")]) == 5


@pytest.mark.parametrize(
    ("kind", "name"),
    [("strategy", "label_smoothing"), ("training plugin", "loss_stop"), ("replay policy", "nearest_to_mean")],
)
def test_block_declares(docs_manager, kind, name):
    assert docs_manager.provider(kind, name).name.startswith("docs-block-")


def test_blocks_run_together(docs_manager, cmrkit_tiny_encoder, cmrkit_synthetic_data, caplog):
    caplog.set_level(logging.INFO, logger="cmrkit")
    recorder = ModelsAddedRecorder()
    docs_manager.register_plugin(recorder, name="recorder")
    census = next(record for record in docs_manager.records.values() if record.module == "DomainCensus")
    result = run_quick_experiment(
        cmrkit_tiny_encoder,
        cmrkit_synthetic_data,
        manager=docs_manager,
        strategy="label_smoothing",
        plugins=["replay", "loss_stop"],
        overrides=[
            "plugins.replay.policy=nearest_to_mean",
            "plugins.loss_stop.threshold=100.0",
            "train.epochs=2",
            "strategies.label_smoothing.smoothing=0.2",
        ],
    )
    assert result.complete
    assert len(docs_manager.get_plugin(census.name).history) == len(recorder.calls)
    assert "ending the experience" in caplog.text


def test_testing_block_passes(pytester):
    blocks = [block for block in code_blocks("python") if block.startswith(TEST_FILE_MARK)]
    pytester.makepyfile(test_my_plugin=blocks[0])
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
