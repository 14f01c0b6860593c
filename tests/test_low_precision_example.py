"""examples/low_precision.py --quick: the table's rows, dtypes and byte counts."""

import math

import checkout
import jax
import jax.numpy as jnp
import optax
import pytest

import adamx

# Runs an example: not in the quick subset (conftest.py).
pytestmark = pytest.mark.slow


def test_low_precision_quick(capsys, monkeypatch):
    checkout.require("examples/state_memory.py")
    monkeypatch.syspath_prepend(
        str(checkout.require("examples/low_precision.py").parent)
    )
    import low_precision
    import state_memory

    result = low_precision.main(["--quick"])
    out = capsys.readouterr().out
    rows = result["rows"]
    assert [r["setup"] for r in rows] == list(low_precision.SETUPS)
    printed = [
        line
        for line in out.splitlines()
        if line[:3] in ("(a)", "(b)", "(c)", "(d)", "(e)")
    ]
    table = printed[: len(low_precision.SETUPS)]  # then "(c) vs the same ..."
    assert [line.split("  ")[0] for line in table] == list(low_precision.SETUPS)
    assert "median paired ratio" in out

    assert rows[0]["param_dtypes"] == ["float32"]
    assert all(r["param_dtypes"] == ["bfloat16"] for r in rows[1:])
    n = rows[0]["n_params"]
    assert all(r["n_params"] == n for r in rows)
    assert rows[0]["param_bytes"] == 4 * n
    assert all(r["param_bytes"] == 2 * n for r in rows[1:])

    # Optimizer state, from the optimizers built here on parameters of the same shapes.
    f32 = state_memory.transformer_task(11, True, 0).params
    bf16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), f32)

    def nbytes(tx, params):
        return adamx.state_nbytes(jax.eval_shape(tx.init, params))

    lr = optax.constant_schedule(1e-3)  # a schedule keeps a count: 4 bytes
    adamw = adamx.adamw(lr)
    assert rows[0]["state_bytes"] == nbytes(adamw, f32) == 8 * n + 8
    assert rows[1]["state_bytes"] == nbytes(adamw, bf16) == 4 * n + 8
    int8 = adamx.adamw(lr, mu_dtype="int8", nu_dtype="int8")
    int4 = adamx.adamw(lr, mu_dtype="int4", nu_dtype="int4")
    # kahan: a one-byte (c) or bfloat16 (e) compensation per parameter;
    # stochastic: nothing per parameter (the wrapper's own scalars stay under
    # 0.01 byte per parameter)
    kahan8_extra = rows[2]["state_bytes"] - nbytes(int8, bf16)
    stochastic_extra = rows[3]["state_bytes"] - nbytes(int4, bf16)
    kahan16_extra = rows[4]["state_bytes"] - nbytes(int8, bf16)
    assert n <= kahan8_extra < n + n / 100
    assert 0 < stochastic_extra < n / 100
    assert 2 * n <= kahan16_extra < 2 * n + n / 100
    for r in rows:
        assert r["bytes_per_param"] == (r["param_bytes"] + r["state_bytes"]) / n
        assert all(math.isfinite(x) for x in r["losses"])
        assert math.isfinite(r["val_loss"]) and r["step_ms"] > 0

    # Plain rounding freezes more parameters late in training than float32 does,
    # and Kahan compensation lands nearer float32 than plain rounding.
    assert rows[1]["unmoved"] > rows[0]["unmoved"]
    delta = [abs(r["train_loss"] / rows[0]["train_loss"] - 1) for r in rows]
    assert delta[2] < delta[1] and delta[4] < delta[1]
    assert result["ratio"]["ratio"] > 0 and result["ratio"]["rounds"] == 10
