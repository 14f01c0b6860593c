"""examples/colab_tpu.ipynb runs top to bottom on the CPU and learns the digits.

The notebook runs in a Jupyter kernel started from this test's own interpreter
(a kernel spec written to a temporary folder), so it sees the same environment
and the installed adamx, with no network and nothing written to the user's
Jupyter folders. It runs on two simulated CPU devices, so the batch really is
split over a mesh as on a multi-core TPU.
"""

import os
import re
import subprocess
import sys
import types

import checkout
import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

DEVICES = 2
CELL_TIMEOUT_S = 50  # a guard against a hung kernel, not a speed requirement
ACCURACY = re.compile(r"final test accuracy \((\w+) state\): (\d\.\d+)")


def read_notebook():
    return nbformat.read(checkout.require("examples/colab_tpu.ipynb"), as_version=4)


def test_stored_without_outputs():
    nb = read_notebook()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert len(code) >= 5
    for cell in code:
        assert cell.outputs == [], cell.source
        assert cell.execution_count is None, cell.source


def test_install_cell_runs_pip_only_in_colab(monkeypatch):
    source = read_notebook().cells[2].source
    assert "REPO_URL" in source
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))

    exec(source, {})  # not in Colab: nothing happens
    assert calls == []

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    with pytest.raises(ValueError, match="REPO_URL"):
        exec(source, {})  # the placeholder is still there
    assert calls == []

    url = "https://github.com/someone/adamx"
    exec(source.replace("https://github.com/<owner>/adamx", url), {})
    pip = [sys.executable, "-m", "pip", "install", "-q", f"adamx @ git+{url}"]
    assert calls == [pip]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notebook")
    write_kernel_spec(tmp / "kernels" / "adamx-test")  # argv: sys.executable
    nb = read_notebook()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(tmp))  # where "adamx-test" is found
        spec = KernelSpecManager().get_kernel_spec("adamx-test")
        assert spec.argv[0] == sys.executable
        env = dict(os.environ)
        env["JAX_PLATFORMS"] = "cpu"
        env["JAX_NUMPY_RANK_PROMOTION"] = "raise"  # as strict as tests/conftest.py
        flags = f"--xla_force_host_platform_device_count={DEVICES}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
        client = NotebookClient(
            nb,
            kernel_name="adamx-test",
            timeout=CELL_TIMEOUT_S,
            startup_timeout=CELL_TIMEOUT_S,
            allow_errors=True,
            resources={"metadata": {"path": str(tmp)}},
        )
        client.execute(env=env)
    return nb


def outputs(nb, kind):
    return [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == kind
    ]


def stdout(nb):
    return "".join(out.text for out in outputs(nb, "stream") if out.name == "stdout")


@pytest.mark.slow
def test_runs_without_errors_or_warnings(executed):
    errors = outputs(executed, "error")
    assert not errors, "\n".join(
        f"{e.ename}: {e.evalue}\n" + "\n".join(e.traceback) for e in errors
    )
    stderr = [out.text for out in outputs(executed, "stream") if out.name == "stderr"]
    assert not stderr, "".join(stderr)


@pytest.mark.slow
def test_runs_data_parallel_on_the_cpu(executed):
    out = stdout(executed)
    assert "backend: cpu" in out
    assert f"{DEVICES} device(s), {128 // DEVICES} examples per device per step" in out


@pytest.mark.slow
def test_learns_the_digits(executed):
    out = stdout(executed)
    accuracies = dict(ACCURACY.findall(out))
    assert set(accuracies) == {"float32", "int8"}, out
    # Chance is 0.10; this MLP reaches about 0.97 in 300 steps.
    for state, accuracy in accuracies.items():
        assert float(accuracy) > 0.9, (state, accuracy)
    losses = [float(v) for v in re.findall(r"step +\d+ +loss (\d+\.\d+)", out)]
    assert len(losses) == 12, out  # 300 steps, every 50, twice
    for run in (losses[:6], losses[6:]):
        assert run[-1] < 0.1 < run[0] / 2, run  # from log(10) ≈ 2.3 at the start


@pytest.mark.slow
def test_int8_state_layout_and_bytes(executed):
    out = stdout(executed)
    # Leaves of 4096 values or more hold 8-bit codes (signed for m, unsigned for
    # v) and one int8 exponent per block of 128 along the last axis; smaller
    # leaves stay float32.
    assert re.search(r"\['Dense_1'\]\['kernel'\]\.codes\s+int8\[256, 256\]", out)
    assert re.search(r"\['Dense_1'\]\['kernel'\]\.scales\s+int8\[256, 2\]", out)
    assert re.search(r"\['Dense_0'\]\['kernel'\]\.codes\s+int8\[64, 256\]", out)
    assert re.search(r"\['Dense_2'\]\['kernel'\]\s+float32\[256, 10\]", out)

    kernels = {"Dense_0": (64, 256), "Dense_1": (256, 256), "Dense_2": (256, 10)}
    sizes = [a * b + b for a, b in kernels.values()]  # weights and biases
    n_params = sum(sizes)
    count = 4  # the int32 step count
    fp32 = 2 * 4 * n_params + count
    big = [(a, b) for a, b in kernels.values() if a * b >= 4096]
    per_moment = sum(a * b + a * (b // 128) for a, b in big)  # codes, exponents
    per_moment += 4 * (n_params - sum(a * b for a, b in big))  # float32 leaves
    int8 = 2 * per_moment + count
    nbytes = dict(re.findall(r"(\w+) +state: +([\d,]+) bytes", out))
    assert {k: int(v.replace(",", "")) for k, v in nbytes.items()} == {
        "float32": fp32,
        "int8": int8,
    }
