"""examples/trajectories.py draws optimizer paths on Rosenbrock, Beale and a saddle.

The example runs once, in-process, at --quick (60 steps). Expected values come
from the functions' closed forms and from the update rules written out, not
from the optimizers themselves.
"""

import contextlib
import io
import math
import re
import runpy

import checkout
import numpy as np
import pytest

# Runs an example: not in the quick subset (conftest.py).
pytestmark = pytest.mark.slow

STEPS = 60
OPTIMIZERS = ("SGD", "momentum", "RMSProp", "AdaGrad", "Adam", "AdamW", "AMSGrad")
FUNCTIONS = ("Rosenbrock", "Beale", "saddle")
# f at the starts: (1 + 1.5)² + 100(2 - 2.25)² at (-1.5, 2); 2² + 3.5² + 5² at
# (1, 1.5); 1 - 10⁻⁶ + 10⁻¹²/2 at (1, 0.001).
START_LOSS = {"Rosenbrock": 12.5, "Beale": 41.25, "saddle": 1 - 1e-6 + 0.5e-12}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    png = tmp_path_factory.mktemp("trajectories") / "paths" / "trajectories.png"
    path = checkout.require("examples/trajectories.py")
    namespace = runpy.run_path(str(path), run_name="trajectories")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        results = namespace["main"](["--quick", "--out", str(png)])
    return {"results": results, "stdout": out.getvalue(), "png": png}


def test_writes_png(run):
    data = run["png"].read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000


def test_paths_start_at_the_start_and_stay_finite(run):
    starts = {"Rosenbrock": (-1.5, 2.0), "Beale": (1.0, 1.5), "saddle": (1.0, 1e-3)}
    for fname in FUNCTIONS:
        assert set(run["results"][fname]) == set(OPTIMIZERS)
        for r in run["results"][fname].values():
            assert r["path"].shape == (STEPS + 1, 2)
            np.testing.assert_allclose(r["path"][0], starts[fname], rtol=1e-7)
            assert r["losses"][0] == pytest.approx(START_LOSS[fname], rel=1e-6)
            assert np.all(np.isfinite(r["losses"]))


def test_prints_final_loss_table(run):
    for name in OPTIMIZERS:
        row = re.search(rf"^{name}\s+(.+)$", run["stdout"], re.M)
        assert row is not None, name
        cells = re.findall(r"(-?[\d.e+-]+) \[([\d.e-]+)\]", row.group(1))
        assert len(cells) == len(FUNCTIONS)
        for (loss, lr), fname in zip(cells, FUNCTIONS, strict=True):
            r = run["results"][fname][name]
            assert float(loss) == pytest.approx(r["losses"][-1], rel=1e-3, abs=1e-6)
            assert float(lr) == r["lr"]
    assert "Machine: " in run["stdout"]


def test_adam_family_descends_rosenbrock(run):
    # 60 steps at learning rate 0.1 do not reach the minimum but must go
    # downhill from f = 12.5 (Adam ends near 5.2, AdamW near 5.0).
    for name in ("Adam", "AdamW", "AMSGrad"):
        assert (
            run["results"]["Rosenbrock"][name]["losses"][-1] < START_LOSS["Rosenbrock"]
        )


def test_first_step_shows_bias_correction(run):
    # At (-1.5, 2) the Rosenbrock gradient is (-155, -50). Bias-corrected Adam
    # and AMSGrad step α·sign(g) exactly; RMSProp (decay 0.9, v₀ = 0, ε = 1e-8
    # under the root) steps α·g/√(0.1 g² + ε) ≈ 3.162 α; AdaGrad (accumulator
    # starting at 0.1, ε = 1e-7 under the root) steps α·g/√(0.1 + g² + ε).
    g = np.array([-155.0, -50.0])
    expected = {
        "Adam": np.ones(2),
        "AMSGrad": np.ones(2),
        "RMSProp": np.abs(g) / np.sqrt(0.1 * g**2 + 1e-8),
        "AdaGrad": np.abs(g) / np.sqrt(0.1 + g**2 + 1e-7),
    }
    for name, ratio in expected.items():
        r = run["results"]["Rosenbrock"][name]
        step = r["path"][1] - r["path"][0]
        np.testing.assert_allclose(np.abs(step) / r["lr"], ratio, rtol=2e-5)
        np.testing.assert_array_equal(np.sign(step), -np.sign(g))
    assert "RMSProp  (3.1623, 3.1623)" in run["stdout"]
    assert "Adam     (1.0000, 1.0000)" in run["stdout"]


def test_sgd_on_the_saddle_follows_the_linearised_flow(run):
    # Gradient descent on x² - y² + y⁴/2 with step η: x ← (1 - 2η)x exactly,
    # y ← y + 2η(y - y³), i.e. y ≈ (1 + 2η)ᵗ y₀ while y³ ≪ y (y ≤ 0.004 here,
    # so the cubic term changes y by under 10⁻⁵ relative).
    r = run["results"]["saddle"]["SGD"]
    eta = r["lr"]
    t = np.arange(STEPS + 1)
    np.testing.assert_allclose(r["path"][:, 0], (1 - 2 * eta) ** t, rtol=1e-5)
    np.testing.assert_allclose(r["path"][:, 1], 1e-3 * (1 + 2 * eta) ** t, rtol=1e-4)


def test_adaptive_methods_leave_the_saddle_first(run):
    # SGD needs y to grow geometrically from 0.001 to 0.5: about
    # ln(500)/ln(1.02) ≈ 314 steps at η = 0.01, far beyond 60. The adaptive
    # methods divide the tiny y-gradient by its own scale and move y by about
    # their learning rate per step: 0.5/0.01 = 50 steps for Adam, fewer for
    # RMSProp (its uncorrected first steps are 3.16 times longer) and AdaGrad
    # (learning rate 0.1).
    saddle = run["results"]["saddle"]
    assert saddle["SGD"]["escape_step"] is None
    assert math.log(500) / math.log(1 + 2 * saddle["SGD"]["lr"]) > STEPS
    for name in ("RMSProp", "AdaGrad", "Adam", "AdamW", "AMSGrad"):
        step = saddle[name]["escape_step"]
        assert step is not None and step <= STEPS, name
        assert abs(saddle[name]["path"][step, 1]) >= 0.5
        assert np.all(np.abs(saddle[name]["path"][:step, 1]) < 0.5)
