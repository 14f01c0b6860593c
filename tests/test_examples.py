"""The examples run and print what they promise (README blocks: test_readme.py)."""

import re
import runpy
import sys

import checkout
import pytest

# Runs an example: not in the quick subset (conftest.py).
pytestmark = pytest.mark.slow


def test_quickstart_prints_seed_results(capsys, monkeypatch):
    path = checkout.require("examples/quickstart.py")
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--steps", "40"])
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "θ₁ = 1.9000" in out
    assert "g = -15.0000  m₁ = -1.5000  v₁ = 0.2250" in out
    assert "w₁ = 0.6000" in out
    losses = [float(v) for v in re.findall(r"train loss (\d+\.\d+)", out)]
    # log(10) ≈ 2.30 is the loss of the zero-initialized model; 40 steps must beat it.
    assert len(losses) == 2 and all(loss < 1.0 for loss in losses)
