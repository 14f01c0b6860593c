"""adamx.with_stats: every recorded number against an independent computation.

Norms, step statistics and non-finite counts are recomputed here in float64
NumPy from the gradients and updates; Adam's signal-to-noise ratio comes from a
float64 NumPy Adam written in this file. The table covers every optimizer of
the catalogue (``tests/catalogue.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalogue import OPTIMIZERS, build

import adamx


def _params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"w": jax.random.normal(k1, (4, 3)), "b": jax.random.normal(k2, (3,))}


def _grads(step, params):
    key = jax.random.PRNGKey(10 + step)
    return jax.tree.map(
        lambda p: jax.random.normal(key, p.shape) * 10.0 ** (step % 3 - 1), params
    )


def _flat(tree):
    return np.concatenate(
        [np.abs(np.asarray(x, np.float64)).ravel() for x in jax.tree.leaves(tree)]
    )


def _run(opt, steps, params=None):
    params = _params() if params is None else params
    state = opt.init(params)
    update = jax.jit(opt.update)
    history = []
    for t in range(steps):
        grads = _grads(t, params)
        updates, state = update(grads, state, params)
        history.append((grads, updates, jax.device_get(state.stats)))
        params = optax.apply_updates(params, updates)
    return history


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_norms_steps_and_counts_match_numpy(name):
    opt = adamx.with_stats(build(name))  # learning rate 1e-2
    for t, (grads, updates, stats) in enumerate(_run(opt, 4), start=1):
        g, u = _flat(grads), _flat(updates)
        assert stats.step == t
        np.testing.assert_allclose(stats.grad_norm, np.linalg.norm(g), rtol=1e-6)
        np.testing.assert_allclose(stats.update_norm, np.linalg.norm(u), rtol=1e-6)
        np.testing.assert_allclose(stats.step_rms, np.sqrt(np.mean(u**2)), rtol=1e-6)
        np.testing.assert_allclose(stats.step_max, u.max(), rtol=1e-6)
        assert stats.nonfinite == 0
        assert np.isfinite(stats.snr_mean) and 0 <= stats.snr_mean <= stats.snr_max


def _numpy_adam_snr(grad_history, b1=0.9, b2=0.999):
    m = v = 0.0
    for g in grad_history:
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
    t = len(grad_history)
    ratio = np.abs(m / (1 - b1**t)) / np.sqrt(v / (1 - b2**t))
    return ratio.mean(), ratio.max()


@pytest.mark.parametrize(
    "mu_dtype", [None, jnp.bfloat16], ids=["float32-state", "bfloat16-state"]
)
def test_adam_signal_to_noise_matches_a_float64_reference(mu_dtype):
    opt = adamx.with_stats(adamx.adam(1e-2, mu_dtype=mu_dtype))
    history = _run(opt, 6)
    seen = []
    for grads, _, stats in history:
        seen.append(
            np.concatenate(
                [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(grads)]
            )
        )
        mean, largest = _numpy_adam_snr(seen)
        rtol = 1e-5 if mu_dtype is None else 1e-2
        np.testing.assert_allclose(stats.snr_mean, mean, rtol=rtol)
        np.testing.assert_allclose(stats.snr_max, largest, rtol=rtol)


def test_every_records_on_steps_one_plus_multiples_and_keeps_values_between():
    opt = adamx.with_stats(adamx.adam(1e-2), every=3)
    history = _run(opt, 7)
    recorded = [int(stats.step) for _, _, stats in history]
    assert recorded == [1, 1, 1, 4, 4, 4, 7]
    g4 = _flat(history[3][0])
    np.testing.assert_allclose(history[5][2].grad_norm, np.linalg.norm(g4), rtol=1e-6)


def test_nonfinite_entries_are_counted_and_norms_do_not_overflow():
    opt = adamx.with_stats(adamx.scale_by_adam(), snr=False)
    params = {"a": jnp.zeros(5), "b": jnp.zeros((2, 2))}
    state = opt.init(params)
    grads = {
        "a": jnp.array([1.0, jnp.nan, jnp.inf, -jnp.inf, 2.0]),
        "b": jnp.array([[jnp.nan, 0.0], [1.0, 1.0]]),
    }
    _, new_state = jax.jit(opt.update)(grads, state)
    assert new_state.stats.nonfinite == 4
    assert np.isinf(new_state.stats.grad_norm) or np.isnan(new_state.stats.grad_norm)
    huge = {"a": jnp.full(5, 1e30), "b": jnp.full((2, 2), -1e30)}
    _, new_state = jax.jit(opt.update)(huge, state)
    np.testing.assert_allclose(new_state.stats.grad_norm, 3e30, rtol=1e-6)
    assert new_state.stats.nonfinite == 0


def test_signal_to_noise_falls_near_an_optimum():
    # A noisy quadratic: far from the optimum the gradient's mean dominates;
    # at the optimum only noise is left and the ratio drops.
    opt = adamx.with_stats(adamx.adam(0.05))
    params = jnp.full(256, 5.0)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        grads = params + jax.random.normal(key, params.shape)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    ratios = []
    for t in range(400):
        params, state = step(params, state, jax.random.PRNGKey(t))
        ratios.append(float(state.stats.snr_mean))
    assert np.mean(ratios[:20]) > 0.8
    assert np.mean(ratios[-50:]) < 0.3


def test_no_host_transfer_inside_the_jitted_update():
    opt = adamx.with_stats(adamx.adam(1e-2), every=2)
    params = jax.device_put(_params())
    state = jax.device_put(opt.init(params))
    grads = jax.device_put(_grads(0, params))
    update = jax.jit(opt.update)
    update(grads, state, params)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        for _ in range(3):
            _, state = update(grads, state, params)
    assert state.stats.step.dtype == jnp.int32


def test_composes_inside_multisteps_and_explains_the_reverse():
    params = _params()
    inside = optax.MultiSteps(adamx.with_stats(adamx.adam(1e-2)), every_k_schedule=2)
    state = inside.init(params)
    for t in range(4):
        _, state = jax.jit(inside.update)(_grads(t, params), state, params)
    assert state.inner_opt_state.stats.step == 2
    outside = adamx.with_stats(optax.MultiSteps(adamx.adam(1e-2), every_k_schedule=2))
    with pytest.raises(ValueError, match=r"with_stats.*jax\.lax\.cond"):
        jax.jit(outside.update)(_grads(0, params), outside.init(params), params)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"with_stats\(every=0.*every must be"):
        adamx.with_stats(adamx.adam(1e-2), every=0)
    opt = adamx.with_stats(optax.sgd(0.1))
    params = _params()
    with pytest.raises(ValueError, match=r"no adamx moments.*snr=False"):
        opt.update(_grads(0, params), opt.init(params), params)
    quiet = adamx.with_stats(optax.sgd(0.1), snr=False)
    _, state = quiet.update(_grads(0, params), quiet.init(params), params)
    assert state.stats.snr_mean == 0 and state.stats.grad_norm > 0


def test_state_can_be_donated():
    opt = adamx.with_stats(adamx.adam(1e-2), every=2)
    params = _params()
    step = jax.jit(
        lambda p, s, g: opt.update(g, s, p), donate_argnums=(1,), keep_unused=True
    )
    state = opt.init(params)
    for t in range(3):
        _, state = step(params, state, _grads(t, params))
    assert state.stats.step == 3


@pytest.mark.slow
def test_example_logs_a_falling_ratio_and_times_recording(tmp_path, capsys):
    import importlib.util

    import checkout

    path = checkout.require("examples/diagnostics.py")
    spec = importlib.util.spec_from_file_location("diagnostics_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--quick", "--png", str(tmp_path / "d.png")])
    ratios = [entry["snr_mean"] for entry in result["log"]]
    assert ratios[-1] < 0.5 * ratios[0]
    assert set(result["timings_ms"]) == {
        "adam",
        "with_stats every=1",
        "with_stats every=10",
        "with_stats every=100",
    }
    assert (tmp_path / "d.png").stat().st_size > 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line[:5].strip().isdigit()]
    assert len(rows) == len(set(rows)) >= 2  # the last row is not printed twice
    assert "temp B/param" in out
    timings = result["timings"]
    assert set(timings) == {"median", "mean", "recording", "temp_bytes"}
    assert timings["temp_bytes"]["adam"] < timings["temp_bytes"]["with_stats every=1"]


def _run_eagerly(opt, steps):
    params = _params()
    state = opt.init(params)
    history = []
    for t in range(steps):
        updates, state = opt.update(_grads(t, params), state, params)
        history.append(jax.device_get(state.stats))
        params = optax.apply_updates(params, updates)
    return history


def test_eager_steps_record_what_jitted_steps_record():
    opt = adamx.with_stats(adamx.adam(1e-2), every=2)
    eager, jitted = _run_eagerly(opt, 5), [s for _, _, s in _run(opt, 5)]
    assert [int(s.step) for s in eager] == [1, 1, 3, 3, 5]
    for a, b in zip(eager, jitted, strict=True):
        for name, x, y in zip(a._fields, a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, err_msg=name)


def test_eager_steps_compile_nothing_after_the_first_recording_and_skipping_ones():
    # Steps 1 (records) and 2 (skips) may compile; a lax.cond run eagerly would
    # be traced and compiled again on every later step.
    compiled = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(duration)

    opt = adamx.with_stats(adamx.adam(1e-2), every=2)
    params = _params()
    state = opt.init(params)
    counts = []
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for t in range(6):
            updates, state = opt.update(_grads(t, params), state, params)
            params = optax.apply_updates(params, updates)
            jax.block_until_ready((params, state))
            counts.append(len(compiled))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert counts[2:] == [counts[1]] * 4
    assert int(state.stats.step) == 5


def _donated_step(opt, params):
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    grads = jax.tree.map(jnp.ones_like, params)
    return (
        jax.jit(step, donate_argnums=(0, 1))
        .lower(params, opt.init(params), grads)
        .compile()
    )


@pytest.mark.parametrize("snr", [True, False])
def test_a_step_that_does_not_record_writes_no_full_size_buffer(snr):
    # The branch reads the old state; the step that overwrites it in place is
    # ordered after the branch, so XLA keeps no copy of the state, and the
    # statistics run leaf after leaf, so their temporaries stay small.
    size = 2**14
    params = {f"w{i}": jnp.ones(size) for i in range(64)}
    compiled = _donated_step(
        adamx.with_stats(adamx.adam(1e-3), every=100, snr=snr), params
    )
    entry = compiled.as_text().split("ENTRY", 1)[1]
    copies = [
        line for line in entry.splitlines() if f"[{size}]" in line and " copy(" in line
    ]
    assert not copies
    plain = _donated_step(adamx.adam(1e-3), params).memory_analysis()
    temporaries = (
        compiled.memory_analysis().temp_size_in_bytes - plain.temp_size_in_bytes
    )
    if not snr:  # the ratio's reductions are the adamx transform's own
        # A few buffers of one leaf, not one per leaf (64 here).
        assert temporaries <= 8 * 4 * size


def test_reductions_leaf_after_leaf_match_numpy():
    from adamx import _reduce, _tree

    rng = np.random.default_rng(0)
    for scale in (1.0, 1e30, 1e-30, 3e37):
        tree = {
            "a": jnp.asarray(rng.normal(size=50) * scale, jnp.float32),
            "b": jnp.asarray(rng.normal(size=(3, 5)) * scale, jnp.float32),
        }
        flat = _flat(tree)
        for stored in (True, False):
            norm, largest = jax.jit(
                lambda t, stored=stored: _reduce.norm_and_largest(
                    _tree.floating_leaves(t), stored=stored
                )
            )(tree)
            np.testing.assert_allclose(norm, np.linalg.norm(flat), rtol=1e-6)
            assert largest == np.float32(flat.max())
    x = jnp.asarray(rng.uniform(size=50), jnp.float32)
    total, top = jax.jit(_reduce.sum_and_max)(x, after=jnp.float32(2.0))
    np.testing.assert_allclose(total, np.asarray(x, np.float64).sum(), rtol=1e-6)
    assert top == x.max()
    bad = {
        "a": jnp.asarray([1.0, jnp.inf, 2.0] * 5),
        "b": jnp.asarray([jnp.nan, 1.0] * 4),
    }
    assert np.isnan(_reduce.norm_and_largest(_tree.floating_leaves(bad))[0])
    assert int(_tree.count_nonfinite(bad, exact_limit=4)) == 9


def test_signal_plumbing_is_private():
    from adamx import _signals

    assert adamx.diagnostics.__all__ == ["Stats", "WithStatsState", "with_stats"]
    assert not hasattr(adamx.diagnostics, "report_signal")
    assert callable(_signals.report_signal) and _signals.SignalSummary._fields == (
        "total",
        "maximum",
        "size",
    )


@pytest.mark.parametrize("every", [1, 3])
def test_updates_and_inner_state_are_the_inner_transformations_bit_for_bit(every):
    inner = adamx.adam(1e-2)
    opt = adamx.with_stats(inner, every=every)
    params = _params()
    state, inner_state = opt.init(params), inner.init(params)
    for t in range(4):
        grads = _grads(t, params)
        updates, state = jax.jit(opt.update)(grads, state, params)
        expected, inner_state = jax.jit(inner.update)(grads, inner_state, params)
        for a, b in zip(
            jax.tree.leaves((updates, state.inner)),
            jax.tree.leaves((expected, inner_state)),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
        params = optax.apply_updates(params, updates)
