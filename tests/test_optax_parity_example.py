"""examples/optax_parity.py runs and reports small deviations for every pair."""

import runpy

import checkout
import pytest

# Runs an example: not in the quick subset (conftest.py).
pytestmark = pytest.mark.slow


def test_optax_parity_example_reports_every_pair(capsys):
    module = runpy.run_path(str(checkout.require("examples/optax_parity.py")))
    results = module["main"](["--steps", "20"])
    assert set(results) == set(module["pairs"]())
    # float32 rounding and exact 1 - beta keep 20 steps far below 1e-4.
    assert all(0 <= value < 1e-4 for value in results.values()), results
    assert capsys.readouterr().out.count("worst relative deviation") == len(results)
