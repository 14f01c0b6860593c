"""ruff, configured in pyproject.toml, passes on the whole repository.

Both need the checkout (its files and its pyproject.toml); without one they
skip. So does the check that pyproject.toml's pytest settings are those
tests/conftest.py applies when there is no pyproject.toml.
"""

import ast
import pathlib
import shutil
import subprocess
import sys

import checkout
import pytest


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff(command):
    root = checkout.require("pyproject.toml").parent
    # The ruff of this interpreter's environment, activated or not.
    ruff = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent))
    ruff = ruff or shutil.which("ruff")
    assert ruff is not None, "ruff is part of the test extra: pip install -e '.[test]'"
    result = subprocess.run([ruff, *command], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def conftest_settings() -> dict:
    """tests/conftest.py's upper-case constants, read without importing it."""
    tree = ast.parse((pathlib.Path(__file__).parent / "conftest.py").read_text())
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.isupper()
    }


def test_pyproject_pytest_settings_are_conftests():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = checkout.require("pyproject.toml")
    tool = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]
    ini, ours = tool["pytest"]["ini_options"], conftest_settings()
    assert ini["filterwarnings"] == ours["FILTERWARNINGS"]
    assert ini["doctest_optionflags"] == ours["DOCTEST_OPTIONFLAGS"]
    assert ini["xfail_strict"] is ours["XFAIL_STRICT"]
    assert ini["markers"] == ours["MARKERS"]
    assert "--doctest-modules" in ini["addopts"].split()
