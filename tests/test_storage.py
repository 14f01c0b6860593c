"""How moments are stored: 8- and 4-bit block-wise codes, bfloat16 rounding.

Table-driven over the storage kinds and over every ``scale_by_*`` and alias of
the catalogue (``tests/catalogue.py``):

- every code format decodes to the grid the :mod:`adamx.quantization`
  docstring describes (built here in float64 from that text); round-to-nearest
  picks a nearest grid point and stochastic rounding a neighbour, unbiased;
- ``quantize_blockwise``/``dequantize_blockwise`` agree with a float64 NumPy
  computation of the block exponents and stay within the stated error bound;
- ``mu_dtype="int8"`` (and ``"int4"``) gives every variant low-bit state for
  large leaves and float32 for small ones, under jit and ``eval_shape``, which
  survives a checkpoint bit for bit and tracks the float32 trajectory; no new
  moment is ever clipped by its block's bound;
- :class:`adamx.Rounded` takes the step from the stored bfloat16 moments;
- ``adamx.state_nbytes`` counts what each storage kind costs;
- :class:`adamx.StochasticRounding` is unbiased, keeps a slow moving average
  moving where round-to-nearest bfloat16 stalls, and is reproducible;
- bad storage arguments and states that do not fit are refused, naming the
  call, the argument or the leaf;
- a small MLP on scikit-learn's digits trains to the float32 loss with
  bfloat16 and 8-bit state.
"""

from __future__ import annotations

import functools
import io
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalogue import ALL, BY_NAME, DIRECTIONS, build, moments

import adamx
from adamx import quantization as q

LEARNING_RATE = 1e-2  # catalogue.REQUIRED's, which build() gives optimizers
INT8 = {"mu_dtype": "int8", "nu_dtype": "int8"}


# ------------------------------------------------------------------ the codes
#
# Every format's code grid, written from the adamx.quantization docstring in
# float64: signed formats are sign + eXmY with subnormals (so a 0), unsigned
# ones eXmY without zero, all with bias 2**X - 1.

FORMATS = {f"int{bits}-{'signed' if signed else 'unsigned'}": fmt
           for (bits, signed), fmt in q.FORMATS.items()}  # fmt: skip
DOCUMENTED = {  # name: (exponent bits, mantissa bits)
    "int8-signed": (4, 3),
    "int8-unsigned": (5, 3),
    "int4-signed": (2, 1),
    "int4-unsigned": (3, 1),
}


def _grid(name):
    """(codes, float64 values) of every code of a format, by its definition."""
    eb, mb = DOCUMENTED[name]
    bias = 2**eb - 1
    magnitudes = []
    for e in range(2**eb):
        for f in range(2**mb):
            if name.endswith("-signed") and e == 0:  # subnormal: f * 2**(1-b-m)
                magnitudes.append(f * 2.0 ** (1 - bias - mb))
            else:
                magnitudes.append(2.0 ** (e - bias) * (1 + f / 2**mb))
    magnitudes = np.asarray(magnitudes)
    codes = np.arange(magnitudes.size)
    if name.endswith("-signed"):
        return np.concatenate([-codes[1:], codes]), np.concatenate(
            [-magnitudes[1:], magnitudes]
        )
    return codes, magnitudes


@pytest.mark.parametrize("name", FORMATS)
def test_decode_gives_the_documented_grid(name):
    codes, values = _grid(name)
    fmt = FORMATS[name]
    got = np.asarray(q.decode(jnp.asarray(codes, jnp.int32), fmt), np.float64)
    np.testing.assert_array_equal(got, values)
    assert fmt.top == values.max()
    assert np.all(np.diff(values[np.argsort(codes)]) > 0)  # monotone in the code


def _samples(name, n=20000, seed=0):
    """Values spread log-uniformly over the format's range, both signs if signed."""
    _, values = _grid(name)
    top = values.max()
    smallest = np.abs(values[values != 0]).min()
    rng = np.random.default_rng(seed)
    x = np.exp(rng.uniform(np.log(smallest / 4), np.log(top), n))
    if name.endswith("-signed"):
        x *= rng.choice([-1.0, 1.0], n)
    return np.concatenate([x, [0.0, top, -top if name.endswith("-signed") else top]])


@pytest.mark.parametrize("name", FORMATS)
def test_nearest_encode_picks_a_nearest_code(name):
    _, grid = _grid(name)
    x = _samples(name).astype(np.float32)
    fmt = FORMATS[name]
    got = np.asarray(q.decode(q.encode(jnp.asarray(x), fmt, None), fmt), np.float64)
    distance = np.abs(grid[None, :] - x[:, None].astype(np.float64))
    best = distance.min(axis=1)
    mine = np.abs(got - x)
    if name.endswith("-unsigned"):  # no zero: below the grid rounds up to its start
        below = x < grid.min()
        assert np.all(got[below] == grid.min())
        mine, best = mine[~below], best[~below]
    np.testing.assert_allclose(mine, best, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", FORMATS)
def test_stochastic_encode_is_a_neighbour_and_unbiased(name):
    _, grid = _grid(name)
    fmt = FORMATS[name]
    x = _samples(name, n=64, seed=1).astype(np.float32)
    if name.endswith("-unsigned"):
        x = x[x >= grid.min()]
    draws = 4000
    noise = q.rounding_noise((draws, x.size), jnp.uint32(7))
    codes = q.encode(jnp.broadcast_to(jnp.asarray(x), (draws, x.size)), fmt, noise)
    got = np.asarray(q.decode(codes, fmt), np.float64)
    ordered = np.sort(grid)
    upper = ordered[np.minimum(np.searchsorted(ordered, x, "left"), ordered.size - 1)]
    lower = ordered[np.maximum(np.searchsorted(ordered, x, "right") - 1, 0)]
    assert np.all((got == lower[None]) | (got == upper[None]))
    # Unbiased: the mean lands within 5 standard errors of x.
    spread = np.maximum(upper - lower, 1e-30)
    error = np.abs(got.mean(axis=0) - x) / spread
    assert np.all(error <= 5 * 0.5 / np.sqrt(draws)), error.max()


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("length", [256, 300, 7])
def test_quantize_round_trip_against_float64(bits, signed, length):
    fmt = q.FORMATS[bits, signed]
    rng = np.random.default_rng(bits + length)
    x = np.exp(rng.uniform(-12, 3, size=(3, length)))  # magnitudes over 6 decades
    if signed:
        x *= rng.choice([-1.0, 1.0], x.shape)
    x[1, :] = 0.0  # an all-zero row of blocks
    x = x.astype(np.float32)
    block = 64
    codes, exponents = q.quantize_blockwise(jnp.asarray(x), fmt, block)
    got = np.asarray(q.dequantize_blockwise(codes, exponents, fmt, block, length))
    assert codes.shape == (3, length if bits == 8 else -(-length // 2))
    blocks = -(-length // block)
    padded = np.zeros((3, blocks * block))
    padded[:, :length] = np.abs(x)
    largest = padded.reshape(3, blocks, block).max(axis=-1)
    # E is the smallest integer with max |x| <= top * 2**E; 0 blocks get -127.
    e = np.ceil(np.log2(np.where(largest > 0, largest, 1) / fmt.top))
    e = np.where(largest > 0, e, -127)
    np.testing.assert_array_equal(np.asarray(exponents), e)
    scale = np.repeat(2.0 ** np.where(e > -127, e, 0), block, axis=-1)[:, :length]
    normal = np.abs(x) >= scale * 2.0 ** (1 - fmt.bias)
    if not signed:  # no zero: values below the grid read back as its start
        normal &= np.abs(x) >= scale * 2.0**-fmt.bias
    relative = np.abs(got - x)[normal] / np.abs(x)[normal]
    assert relative.max() <= 2.0 ** -(fmt.mantissa_bits + 1) * (1 + 1e-6)
    np.testing.assert_array_equal(got[1], 0.0)
    stored = q.stored_abs_max(codes, exponents, fmt, block)
    padded_got = np.zeros((3, blocks * block))
    padded_got[:, :length] = np.abs(got)
    np.testing.assert_array_equal(
        np.asarray(stored), padded_got.reshape(3, blocks, block).max(axis=-1)
    )


def test_a_non_finite_block_reads_back_as_nan():
    fmt = q.FORMATS[8, True]
    x = jnp.asarray([[1.0, np.inf, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    codes, exponents = q.quantize_blockwise(x, fmt, 2)
    assert np.asarray(exponents).tolist() == [[-128, 1], [1, 2]]
    got = np.asarray(q.dequantize_blockwise(codes, exponents, fmt, 2, 4))
    assert np.isnan(got[0, :2]).all() and np.isfinite(got[0, 2:]).all()


def test_rounding_noise_depends_on_position_and_salt():
    a = np.asarray(q.rounding_noise((4, 1000), jnp.uint32(1)))
    b = np.asarray(q.rounding_noise((4, 1000), jnp.uint32(2)))
    assert len(np.unique(a)) > 3990 and (a != b).mean() > 0.99
    # Roughly uniform: each of 16 top-bit buckets holds 1/16 of the values.
    counts = np.bincount((a >> 28).ravel(), minlength=16) / a.size
    np.testing.assert_allclose(counts, 1 / 16, atol=0.01)


# --------------------------------------------- int8 state, every variant

W_SHAPE, B_SHAPE = (64, 512), (512,)
STEPS = 50


def _setup():
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=W_SHAPE), jnp.float32),
        "b": jnp.asarray(rng.normal(size=B_SHAPE), jnp.float32),
    }
    target = jax.tree.map(lambda p: 0.5 * p + 1.0, params)
    # Gradient magnitudes vary along the last axis, within each block.
    spread = {
        "w": jnp.broadcast_to(1.0 + jnp.arange(512.0)[None, :] / 512, W_SHAPE),
        "b": 1.0 + jnp.arange(512.0) / 512,
    }
    noise = {
        "w": jnp.asarray(0.3 * rng.normal(size=(STEPS, *W_SHAPE)), jnp.float32),
        "b": jnp.asarray(0.3 * rng.normal(size=(STEPS, *B_SHAPE)), jnp.float32),
    }
    return params, target, spread, noise


PARAMS, TARGET, SPREAD, NOISE = _setup()


def _grads(params, step):
    """A noisy quadratic's gradient: (p - target) * spread + noise_t."""
    return {k: (params[k] - TARGET[k]) * SPREAD[k] + NOISE[k][step] for k in ("w", "b")}


def _move(name, params, updates):
    """Params after a step: a scale_by_* gives a direction, an optimizer the step."""
    if name in DIRECTIONS:
        updates = jax.tree.map(lambda u: -LEARNING_RATE * u, updates)
    return jax.tree.map(jnp.add, params, updates)


@functools.cache
def _low_bit_transforms(kind="int8"):
    """Every variant's ``kind`` transform, and one jitted update running all.

    One compilation of all the updates costs about half as much as compiling
    each alone, and every variant's update is still traced and run under jit.
    Besides the outputs it returns whether each variant's updates are finite.
    """
    transforms = {name: build(name, mu_dtype=kind, nu_dtype=kind) for name in ALL}

    @jax.jit
    def update_all(grads, states, params):
        outputs = {
            name: tx.update(grads[name], states[name], params[name])
            for name, tx in transforms.items()
        }
        finite = {
            name: jnp.all(
                jnp.stack([jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(o[0])])
            )
            for name, o in outputs.items()
        }
        return outputs, finite

    return transforms, update_all


def _run_all(params, states, steps, keep=3, kind="int8"):
    """Every variant's jitted int8 update over ``steps``.

    Returns the final params and states, each variant's finiteness per step,
    and for the first ``keep`` steps the inputs (grads, states, params) and
    outputs (updates, state) of every variant.
    """
    _, update_all = _low_bit_transforms(kind)
    record, finite = [], []
    for step in steps:
        grads = {name: _grads(params[name], step) for name in ALL}
        outputs, ok = update_all(grads, states, params)
        finite.append(ok)
        if len(record) < keep:
            record.append((grads, states, params, outputs))
        params = {name: _move(name, params[name], outputs[name][0]) for name in ALL}
        states = {name: outputs[name][1] for name in ALL}
    return params, states, finite, record


CHECKPOINT_STEP = 3


def _through_a_checkpoint(tree):
    """``tree`` flattened to NumPy, written and read back, and unflattened."""
    leaves, treedef = jax.tree.flatten(tree)
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(x) for x in leaves])
    buffer.seek(0)
    with np.load(buffer) as saved:
        loaded = [saved[f"arr_{i}"] for i in range(len(leaves))]
    return jax.tree.unflatten(treedef, loaded)


@functools.cache
def _low_bit_runs(kind="int8"):
    """The int8 runs of every variant: up to the checkpoint, on, and restored."""
    transforms, _ = _low_bit_transforms(kind)
    params = dict.fromkeys(ALL, PARAMS)
    states = {name: tx.init(PARAMS) for name, tx in transforms.items()}
    head = _run_all(params, states, range(CHECKPOINT_STEP), kind=kind)
    params, states = head[:2]
    tail = _run_all(params, states, range(CHECKPOINT_STEP, STEPS), kind=kind)
    restored = _through_a_checkpoint(states)
    resumed = _run_all(
        params, restored, range(CHECKPOINT_STEP, CHECKPOINT_STEP + 3), kind=kind
    )
    return head, tail, restored, resumed


def _assert_close_states(got, want):
    """Float leaves to float32 rounding; 8-bit codes may differ by one at ties."""
    got_leaves, got_def = jax.tree.flatten(got)
    want_leaves, want_def = jax.tree.flatten(want)
    assert got_def == want_def
    for a, b in zip(got_leaves, want_leaves, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.dtype in (np.uint8, np.int8) and a.size > 1000:  # codes
            diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
            assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3
        elif np.issubdtype(a.dtype, np.integer):
            np.testing.assert_array_equal(a, b)
        else:
            scale = np.abs(b).max() if b.size else 0.0
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale)


def _assert_identical(got, want):
    got_leaves, got_def = jax.tree.flatten(got)
    want_leaves, want_def = jax.tree.flatten(want)
    assert got_def == want_def
    for a, b in zip(got_leaves, want_leaves, strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ALL)
def test_int8_state_holds_codes_for_large_leaves_only(name):
    state = _low_bit_transforms()[0][name].init(PARAMS)
    found = moments(state)
    assert tuple(field for field, _ in found) == BY_NAME[name].moments, found
    for field, moment in found:
        w, b = moment["w"], moment["b"]
        assert isinstance(w, adamx.QuantizedArray), field
        signed = field.startswith("mu")
        assert w.codes.dtype == (jnp.int8 if signed else jnp.uint8)
        assert w.codes.shape == W_SHAPE
        assert w.scales.dtype == jnp.int8 and w.scales.shape == (64, 4)
        assert not isinstance(b, adamx.QuantizedArray)
        assert b.dtype == jnp.float32 and b.shape == B_SHAPE
    # Every moment starts where the float32 one does (0, or an initial value
    # rounded to the nearest code: within half a code's relative spacing).
    reference = dict(moments(build(name).init(PARAMS)))
    for field, moment in found:
        fmt = q.FORMATS[8, field.startswith("mu")]
        w = moment["w"]
        decoded = q.dequantize_blockwise(w.codes, w.scales, fmt, 128, W_SHAPE[-1])
        np.testing.assert_allclose(
            decoded, reference[field]["w"], rtol=2.0 ** -(fmt.mantissa_bits + 1)
        )
        np.testing.assert_array_equal(moment["b"], reference[field]["b"])


@pytest.mark.parametrize("name", ALL)
def test_int8_eval_shape_matches_init(name):
    tx = _low_bit_transforms()[0][name]
    abstract = jax.eval_shape(tx.init, PARAMS)
    concrete = tx.init(PARAMS)
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
    for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete), strict=True):
        assert (a.shape, a.dtype) == (c.shape, c.dtype)


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("name", ALL)
def test_low_bit_jit_agrees_with_eager(name, kind):
    tx = _low_bit_transforms(kind)[0][name]
    head, _, _, _ = _low_bit_runs(kind)
    record = head[3]
    assert len(record) == CHECKPOINT_STEP
    for grads, states, params, outputs in record:
        eager = tx.update(grads[name], states[name], params[name])
        _assert_close_states(outputs[name], eager)


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("name", ALL)
def test_low_bit_state_survives_a_checkpoint_bit_for_bit(name, kind):
    head, tail, restored, resumed = _low_bit_runs(kind)
    original = head[1][name]
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(restored[name]))
    _assert_identical(restored[name], original)
    # Continuing from the restored state matches continuing from the original.
    want, got = tail[3], resumed[3]
    assert len(got) == len(want) == 3
    for (_, _, _, a), (_, _, _, b) in zip(got, want, strict=True):
        _assert_identical(a[name], b[name])


def _distance(a, b):
    return float(
        np.sqrt(
            sum(
                np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)
                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
            )
        )
    )


# 8-bit codes carry a relative error below 2**-3 per write, 4-bit ones below
# 2**-1, unbiased (stochastic rounding). Such errors mostly average out over
# steps rather than add up: over these 50 steps every variant's params land
# within 2.3-4.8% (int8) and 10.6-20.8% (int4) of the float32 run's total
# movement from the same start. The tolerances leave room for that, while a
# broken encoding (wrong scale, lost sign, clipped blocks) moves far more.
TRAJECTORY_TOLERANCE = {"int8": 0.07, "int4": 0.3}


@functools.cache  # the int8 and the int4 test of a variant share it
def _float32_run(name):
    full = build(name)
    params, state = PARAMS, full.init(PARAMS)
    for step in range(STEPS):
        updates, state = full.update(_grads(params, step), state, params)
        params = _move(name, params, updates)
    return params


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("name", ALL)
def test_low_bit_trajectory_tracks_float32(name, kind):
    head, tail, _, _ = _low_bit_runs(kind)
    final = tail[0][name]
    finite = [bool(ok[name]) for ok in head[2] + tail[2]]
    assert len(finite) == STEPS and all(finite)
    for _, _, _, outputs in head[3] + tail[3]:
        assert {leaf.dtype for leaf in jax.tree.leaves(outputs[name][0])} == {
            np.dtype(jnp.float32)
        }
    params = _float32_run(name)
    movement = _distance(params, PARAMS)
    assert movement > 1.0  # the run goes somewhere
    assert _distance(final, params) <= TRAJECTORY_TOLERANCE[kind] * movement


# ----------------------------------------- block bounds: no code ever clips
#
# Monotone variants size each block from the update rule applied to block
# maxima; the others from the exact maximum. Either way no new moment may be
# clipped: one update from a low-bit state must land, after decoding, within
# the codes' rounding error (2**-m relative in the normal range, one step of
# the block's smallest spacing below it) of the same update run in float32
# from the decoded state. Gradients jump 1000x on the spike step, so
# the bounds have to grow with them.

BOUND_STEPS = (0, 1, 2, 3)  # step 2 is the spike


def _bound_grads(step):
    rng = np.random.default_rng(step)
    g = rng.normal(size=W_SHAPE) * np.exp(rng.uniform(-6, 0, size=W_SHAPE))
    return {"w": jnp.asarray(g * (1000.0 if step == 2 else 1.0), jnp.float32)}


def _decoded(state, like):
    """``state`` with every QuantizedArray replaced by its float32 values."""

    def visit(node, field=None):
        if isinstance(node, adamx.QuantizedArray):
            fmt = q.FORMATS[like, field.startswith("mu")]
            return q.dequantize_blockwise(
                node.codes, node.scales, fmt, 128, W_SHAPE[-1]
            )
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*(visit(getattr(node, f), f) for f in node._fields))
        if isinstance(node, dict):
            return {k: visit(v, field) for k, v in node.items()}
        if isinstance(node, (tuple, list)):
            return type(node)(visit(v, field) for v in node)
        return node

    return visit(state)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", DIRECTIONS)
def test_new_low_bit_moments_are_never_clipped(name, bits):
    kind = f"int{bits}"
    coded = build(name, mu_dtype=kind, nu_dtype=kind)
    plain = build(name)
    params = {"w": PARAMS["w"]}
    state = coded.init(params)
    update = jax.jit(coded.update)
    for step in BOUND_STEPS:
        grads = _bound_grads(step)
        start = _decoded(state, bits)
        _, state = update(grads, state, params)
        _, reference = plain.update(grads, start, params)
        got = dict(moments(_decoded(state, bits)))
        exponents = {f: m["w"].scales for f, m in moments(state)}
        for field, want in moments(reference):
            want, have = np.asarray(want["w"]), np.asarray(got[field]["w"])
            fmt = q.FORMATS[bits, field.startswith("mu")]
            # The smallest spacing: subnormal steps, or the zero-free start.
            lowest = 1 - fmt.bias - fmt.mantissa_bits if fmt.signed else -fmt.bias
            scale = 2.0 ** np.asarray(exponents[field], np.float64)
            floor = np.repeat(scale, 128, axis=-1) * 2.0**lowest
            slack = 2.0**-fmt.mantissa_bits * np.abs(want) + floor
            excess = np.abs(have - want) - slack * (1 + 1e-5)
            assert excess.max() <= 0, (step, field, float(excess.max()))


# ------------------------------------------------- steps from stored moments
#
# adamx.Rounded(dtype): moments stored in dtype, and the step taken from the
# stored values. Checked against a float64 NumPy Adam that rounds each new
# moment to bfloat16 before using it.


def test_rounded_bfloat16_adam_steps_from_the_stored_moments():
    import ml_dtypes

    bf16 = adamx.Rounded(jnp.bfloat16)
    tx = adamx.scale_by_adam(mu_dtype=bf16, nu_dtype=bf16)
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(6, 4096)) * np.exp(rng.uniform(-8, 2, size=4096))
    state = tx.init(jnp.zeros(4096))
    m = v = np.zeros(4096)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t, g in enumerate(grads.astype(np.float32), start=1):
        u, state = tx.update(jnp.asarray(g), state)
        m = (b1 * m + (1 - b1) * g).astype(ml_dtypes.bfloat16).astype(np.float64)
        v = (b2 * v + (1 - b2) * g * g).astype(ml_dtypes.bfloat16).astype(np.float64)
        want = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(np.asarray(u), want, rtol=2e-5, atol=0)
        np.testing.assert_array_equal(np.asarray(state.mu, np.float64), m)
        assert state.mu.dtype == state.nu.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", [n for n in ALL if BY_NAME[n].rounded_storage])
def test_rounded_storage_stays_within_a_rounding_of_the_plain_dtype(name):
    bf16, rounded = jnp.bfloat16, adamx.Rounded(jnp.bfloat16)
    plain = build(name, mu_dtype=bf16, nu_dtype=bf16)
    stepped = build(name, mu_dtype=rounded, nu_dtype=rounded)
    params = {"w": PARAMS["w"]}
    grads = _grads({"w": PARAMS["w"], "b": PARAMS["b"]}, 0)
    grads = {"w": grads["w"]}
    a, state_a = plain.update(grads, plain.init(params), params)
    b, state_b = stepped.update(grads, stepped.init(params), params)
    _assert_identical(state_a, state_b)  # same moments, stored alike
    a, b = np.asarray(a["w"], np.float64), np.asarray(b["w"], np.float64)
    # One bfloat16 rounding of each moment moves the step by at most ~2**-8.
    np.testing.assert_allclose(b, a, rtol=2.0**-7, atol=1e-12)
    assert np.any(a != b)


@pytest.mark.parametrize("name", [n for n in ALL if not BY_NAME[n].rounded_storage])
def test_rounded_storage_is_refused_where_the_step_needs_the_old_moments(name):
    with pytest.raises(ValueError, match=re.escape(f"{name}: adamx.Rounded")):
        build(name, mu_dtype=adamx.Rounded(jnp.bfloat16))


def test_rounded_storage_refuses_a_non_floating_dtype():
    with pytest.raises(ValueError, match=re.escape("adam(nu_dtype=Rounded(")):
        adamx.adam(1e-3, nu_dtype=adamx.Rounded(jnp.int8))


# ------------------------------------------------------------ storage options

STORAGE_OPTIONS = {
    # name: (storage, scales shape of w or None when float32, b quantized)
    "int8": ("int8", (64, 4), False),
    "int4": ("int4", (64, 4), False),
    "Quantized()": (adamx.Quantized(), (64, 4), False),
    "block 64": (adamx.Quantized(block_size=64), (64, 8), False),
    "block 1024": (adamx.Quantized(block_size=1024), (64, 1), False),
    "min_size 512": (adamx.Quantized(min_size=512), (64, 4), True),
    "min_size above w": (adamx.Quantized(min_size=64 * 512 + 1), None, False),
}


@pytest.mark.parametrize("option", STORAGE_OPTIONS)
def test_quantized_options_decide_which_leaves_and_blocks(option):
    storage, w_scales, b_quantized = STORAGE_OPTIONS[option]
    params = {**PARAMS, "s": jnp.ones(())}  # a 0-d leaf always stays float32
    tx = adamx.scale_by_adam(mu_dtype=storage, nu_dtype=storage)
    state = jax.eval_shape(tx.init, params)  # init's layout, as checked above
    for moment in (state.mu, state.nu):
        w, b, s = moment["w"], moment["b"], moment["s"]
        if w_scales is None:
            assert not isinstance(w, adamx.QuantizedArray)
            assert w.shape == W_SHAPE and w.dtype == jnp.float32
        else:
            assert isinstance(w, adamx.QuantizedArray)
            half = option == "int4"
            assert w.codes.shape == (64, 256 if half else 512)
            assert w.scales.shape == w_scales and w.scales.dtype == jnp.int8
        assert isinstance(b, adamx.QuantizedArray) == b_quantized
        assert not isinstance(s, adamx.QuantizedArray)
        assert s.shape == () and s.dtype == jnp.float32


def test_small_complex_leaves_keep_complex_float_state_under_int8():
    params = {"z": jnp.ones((10, 10), jnp.complex64), "w": PARAMS["w"]}
    tx = adamx.scale_by_adam(**INT8)
    state = tx.init(params)
    assert state.mu["z"].dtype == jnp.complex64
    assert state.nu["z"].dtype == jnp.float32
    assert isinstance(state.mu["w"], adamx.QuantizedArray)
    grads = {"z": jnp.full((10, 10), 1 + 1j, jnp.complex64), "w": PARAMS["w"]}
    updates, _ = tx.update(grads, state)
    assert updates["z"].dtype == jnp.complex64
    assert bool(jnp.all(jnp.isfinite(updates["z"])))


# -------------------------------------------------------------------- memory

BIG = (1024, 4096)
N_BIG = BIG[0] * BIG[1]
COUNT_BYTES = 4


def _moment_bytes(kind):
    """Bytes of one moment of the BIG leaf, by hand."""
    return {
        "float32": 4 * N_BIG,
        "bfloat16": 2 * N_BIG,
        "stochastic": 2 * N_BIG,
        # a byte (or half a byte) per value, an int8 exponent per 128 values
        "int8": N_BIG + BIG[0] * (BIG[1] // 128),
        "int4": N_BIG // 2 + BIG[0] * (BIG[1] // 128),
    }[kind]


STORAGE_KINDS = {
    "float32": None,
    "bfloat16": jnp.bfloat16,
    "stochastic": adamx.StochasticRounding(),
    "int8": "int8",
    "int4": "int4",
}
MOMENTS = {"scale_by_adam": 2, "scale_by_amsgrad": 3, "scale_by_ademamix": 3, "adam": 2}


@pytest.mark.parametrize("kind", STORAGE_KINDS)
@pytest.mark.parametrize("name", MOMENTS)
def test_state_nbytes_by_storage_kind(name, kind):
    storage = STORAGE_KINDS[kind]
    tx = build(name, mu_dtype=storage, nu_dtype=storage)
    abstract = jax.eval_shape(tx.init, jax.ShapeDtypeStruct(BIG, jnp.float32))
    expected = MOMENTS[name] * _moment_bytes(kind) + COUNT_BYTES
    assert adamx.state_nbytes(abstract) == expected


@pytest.mark.parametrize(
    ("name", "kind", "most"),
    [
        ("scale_by_adam", "int8", 2.05),
        ("scale_by_adam", "int4", 1.1),
        ("scale_by_adam", "bfloat16", 4.0 + 1e-5),
        ("scale_by_adam", "float32", 8.0 + 1e-5),
        ("scale_by_amsgrad", "int8", 3.05),
    ],
)
def test_bytes_per_parameter(name, kind, most):
    storage = STORAGE_KINDS[kind]
    tx = build(name, mu_dtype=storage, nu_dtype=storage)
    abstract = jax.eval_shape(tx.init, jax.ShapeDtypeStruct(BIG, jnp.float32))
    per_param = adamx.state_nbytes(abstract) / N_BIG
    assert most - 0.1 < per_param <= most


@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_state_nbytes_is_the_same_for_abstract_and_concrete_state(kind):
    storage = STORAGE_KINDS[kind]
    tx = adamx.scale_by_amsgrad(mu_dtype=storage, nu_dtype=storage)
    concrete = tx.init(PARAMS)
    abstract = jax.eval_shape(tx.init, PARAMS)
    by_hand = sum(
        x.size * x.dtype.itemsize for x in jax.tree.leaves(concrete)
    )  # arrays know their bytes
    assert adamx.state_nbytes(concrete) == adamx.state_nbytes(abstract) == by_hand


# ---------------------------------------------------- stochastic rounding


def _bf16_neighbours(x):
    """The bfloat16 values just below and above |x| (in magnitude), signed as x."""
    bits = np.asarray([x], np.float32).view(np.uint32)[0]
    low = np.uint32(bits & 0xFFFF0000)
    high = np.uint32(low + 0x10000)
    return (
        float(np.asarray([low], np.uint32).view(np.float32)[0]),
        float(np.asarray([high], np.uint32).view(np.float32)[0]),
    )


N_UNBIASED = 65536
# (moment, gradient g, the float32 value the moment takes before storage):
# with b1=0 the first moment is g, with b2=0 the second moment is g^2, exactly.
UNBIASED_CASES = {
    "quarter ulp": ("mu", 1 + 2.0**-9),
    "three quarters, negative": ("mu", -(3 + 0.75 * 2.0**-6)),
    "half ulp, small": ("mu", 2.0**-10 * (1 + 0.5 * 2.0**-7)),
    "1/128 ulp": ("mu", 1 + 2.0**-14),
    "exact bfloat16": ("mu", 1.5),
    "g^2 just past half": ("nu", 1 + 2.0**-9),  # g^2 = 1 + 2^-8 + 2^-18
    "g^2 a quarter": ("nu", 1 + 2.0**-10),  # g^2 = 1 + 2^-9 + 2^-20
}


def _stored_once(moment, g, storage):
    """The moment stored after one step of Adam from zero, per element."""
    kwargs = {"b1": 0.0} if moment == "mu" else {"b2": 0.0}
    tx = adamx.scale_by_adam(**kwargs, **{f"{moment}_dtype": storage})
    grads = jnp.full((N_UNBIASED,), g, jnp.float32)
    _, state = tx.update(grads, tx.init(jnp.zeros((N_UNBIASED,))))
    return np.asarray(getattr(state, moment), np.float64)


@pytest.mark.parametrize("case", UNBIASED_CASES)
def test_stochastic_rounding_is_unbiased(case):
    moment, g = UNBIASED_CASES[case]
    x = float(np.float64(np.float32(g)) ** (1 if moment == "mu" else 2))
    assert float(np.float32(x)) == x  # the moment is exactly x before rounding
    low, high = _bf16_neighbours(x)
    ulp = high - low
    fraction = (x - low) / ulp  # of the way from low to high: P(round up)

    stored = _stored_once(moment, g, adamx.StochasticRounding(seed=3))
    if fraction == 0:
        assert np.all(stored == x)
        return
    assert set(np.unique(stored)) <= {low, high}
    standard_error = abs(ulp) * np.sqrt(fraction * (1 - fraction) / N_UNBIASED)
    assert abs(stored.mean() - x) <= 5 * standard_error
    up = np.mean(stored == high)
    assert abs(up - fraction) <= 5 * np.sqrt(fraction * (1 - fraction) / N_UNBIASED)

    nearest = _stored_once(moment, g, jnp.bfloat16)
    assert len(np.unique(nearest)) == 1  # round-to-nearest: one value, biased
    assert abs(nearest.mean() - x) > 20 * standard_error


@functools.cache
def _long_run(kind):
    """Adam with b1 = b2 = 0.999 and a constant gradient, moments stored as kind."""
    storage = STORAGE_KINDS[kind]
    rng = np.random.default_rng(11)
    g = jnp.asarray(rng.uniform(0.5, 2.0, size=4096), jnp.float32)
    tx = adamx.scale_by_adam(b1=0.999, b2=0.999, mu_dtype=storage, nu_dtype=storage)

    @jax.jit
    def run(state):
        def body(state, _):
            return tx.update(g, state)[1], None

        return jax.lax.scan(body, state, None, length=LONG_STEPS)[0]

    halfway = run(tx.init(jnp.zeros(4096)))
    return np.asarray(g, np.float64), halfway, run(halfway)


LONG_STEPS = 1000  # per half of the run


@pytest.mark.parametrize("moment", ["mu", "nu"])
def test_round_to_nearest_bfloat16_moving_average_stalls(moment):
    g, halfway, end = _long_run("bfloat16")
    power = 1 if moment == "mu" else 2
    true = g**power * (1 - 0.999 ** (2 * LONG_STEPS))  # the float64 EMA
    stored = np.asarray(getattr(end, moment), np.float64)
    # Once 0.001 * (g^power - m) is under half a bfloat16 ulp of m, every step
    # rounds back to m: the second half of the run changes nothing.
    np.testing.assert_array_equal(stored, np.asarray(getattr(halfway, moment)))
    assert np.mean(stored / true - 1) < -0.2


@pytest.mark.parametrize("moment", ["mu", "nu"])
def test_stochastic_rounding_moving_average_tracks_float64(moment):
    g, halfway, end = _long_run("stochastic")
    power = 1 if moment == "mu" else 2
    steps = 2 * LONG_STEPS
    true = g**power * (1 - 0.999**steps)
    stored = np.asarray(getattr(end, moment), np.float64)
    relative = stored / true - 1
    # Each write adds independent zero-mean noise of variance <= ulp^2/4, with
    # ulp <= 2^-7 |m|; the average keeps it with weights 0.999^i, so each
    # element's error has sd <= 2^-7 / 2 / sqrt(1 - 0.999^2), and the mean
    # over independent elements a standard error that much over sqrt(n).
    sd_bound = 2.0**-7 / 2 / np.sqrt(1 - 0.999**2)
    assert np.std(relative) <= sd_bound
    assert abs(np.mean(relative)) <= 5 * sd_bound / np.sqrt(len(g))
    assert not np.array_equal(stored, np.asarray(getattr(halfway, moment)))


def _rounded(seed, params, grads, steps=1, **kwargs):
    """AMSGrad's state after ``steps`` with b1 = b2 = 0: every moment is g or g^2."""
    storage = adamx.StochasticRounding(seed)
    tx = adamx.scale_by_amsgrad(
        b1=0.0, b2=0.0, mu_dtype=storage, nu_dtype=storage, **kwargs
    )
    state = tx.init(params)
    for _ in range(steps):
        _, state = tx.update(grads, state)
    return state


_VALUES = jnp.asarray(
    np.random.default_rng(5).uniform(1.0, 2.0, size=4096), jnp.float32
)  # random fractions of a bfloat16 ulp


def _differing(a, b):
    return float(np.mean(np.asarray(a) != np.asarray(b)))


def test_stochastic_rounding_is_reproducible_per_seed():
    params, grads = {"a": jnp.zeros(4096)}, {"a": _VALUES}
    first = _rounded(0, params, grads, steps=2)
    _assert_identical(_rounded(0, params, grads, steps=2), first)
    other = _rounded(1, params, grads, steps=2)
    # A uniform fraction rounds differently under independent noise w.p. 1/3.
    assert _differing(other.mu["a"], first.mu["a"]) > 0.25
    assert _differing(other.nu["a"], first.nu["a"]) > 0.25


@pytest.mark.parametrize(
    ("what", "pick"),
    [
        # two leaves with the same values
        ("leaf", lambda s: (s.mu["a"], s.mu["b"])),
        # nu and nu_max hold the same value (a raw max from 0), in two slots
        ("moment slot", lambda s: (s.nu["a"], s.nu_max["a"])),
    ],
)
def test_stochastic_rounding_noise_differs_per_leaf_and_slot(what, pick):
    params = {"a": jnp.zeros(4096), "b": jnp.zeros(4096)}
    grads = {"a": _VALUES, "b": _VALUES}
    state = _rounded(
        0, params, grads, bias_correction_mu=False, bias_correction_nu=False
    )
    first, second = pick(state)
    assert _differing(first, second) > 0.25, what


def test_stochastic_rounding_noise_differs_per_step():
    params, grads = {"a": jnp.zeros(4096)}, {"a": _VALUES}
    # with b1 = 0 the stored first moment is a fresh rounding of g each step
    one = _rounded(0, params, grads, steps=1)
    two = _rounded(0, params, grads, steps=2)
    assert _differing(one.mu["a"], two.mu["a"]) > 0.25


# ------------------------------------------------------------------ bad input

BAD_DTYPES = [("nu_dtype", "int2"), ("mu_dtype", "uint8")]


@pytest.mark.parametrize(("arg", "value"), BAD_DTYPES)
@pytest.mark.parametrize("name", ALL)
def test_non_floating_storage_is_refused_quoting_the_call(name, arg, value):
    quoted = re.escape(f"{name}({arg}={value!r})")
    with pytest.raises(ValueError, match=f"^{quoted}"):
        build(name, **{arg: value})


BAD_QUANTIZED = [
    ({"block_size": 100}, "Quantized(block_size=100)"),
    ({"block_size": 0}, "Quantized(block_size=0)"),
    ({"block_size": -256}, "Quantized(block_size=-256)"),
    ({"block_size": 3.0}, "Quantized(block_size=3.0)"),
    ({"block_size": 256.0}, "Quantized(block_size=256.0)"),
    ({"block_size": True}, "Quantized(block_size=True)"),
    ({"min_size": -1}, "Quantized(min_size=-1)"),
    ({"min_size": 2.5}, "Quantized(min_size=2.5)"),
    ({"min_size": True}, "Quantized(min_size=True)"),
    ({"bits": 2}, "Quantized(bits=2)"),
    ({"bits": 16}, "Quantized(bits=16)"),
    ({"seed": -1}, "Quantized(seed=-1)"),
]


@pytest.mark.parametrize(("kwargs", "quoted"), BAD_QUANTIZED)
def test_bad_quantized_options_are_refused_quoting_the_call(kwargs, quoted):
    with pytest.raises(ValueError, match=f"^{re.escape(quoted)}"):
        adamx.Quantized(**kwargs)


@pytest.mark.parametrize("storage", ["mu_dtype", "both"])
@pytest.mark.parametrize("name", ALL)
def test_int8_state_for_a_large_complex_leaf_is_refused_naming_it(name, storage):
    kwargs = INT8 if storage == "both" else {"mu_dtype": "int8"}
    params = {"b": jnp.zeros(3), "z": jnp.zeros((64, 128), jnp.complex64)}
    tx = build(name, **kwargs)
    with pytest.raises(TypeError, match=re.escape("parameter leaf ['z']")):
        tx.init(params)


def _int8_adam_state(shapes, storage="int8"):
    """A state laid out as ``init`` lays it out for params of these shapes."""
    tx = adamx.scale_by_adam(mu_dtype=storage, nu_dtype=storage)
    params = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in shapes.items()}
    layout = jax.eval_shape(tx.init, params)
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), layout)


# name -> (a state built for other params, words the error must contain)
FOREIGN = {
    "wider w": (
        lambda: _int8_adam_state({"w": (64, 1024), "b": B_SHAPE}),
        ["['w']", "(64, 1024)", "(64, 512)"],
    ),
    "transposed w": (
        lambda: _int8_adam_state({"w": (512, 64), "b": B_SHAPE}),
        ["['w']", "(512, 64)"],
    ),
    "swapped leaves": (
        lambda: _int8_adam_state({"w": B_SHAPE, "b": W_SHAPE}),
        ["['b']"],
    ),
    "another tree": (
        lambda: _int8_adam_state({"a": W_SHAPE}),
        ["does not match", "['a']"],
    ),
    # codes shaped like w, but one scale per 256 values rather than per 128
    "other block size": (
        lambda: _int8_adam_state(
            {"w": W_SHAPE, "b": B_SHAPE}, adamx.Quantized(block_size=256)
        ),
        ["['w']"],
    ),
    "4-bit codes": (
        lambda: _int8_adam_state({"w": W_SHAPE, "b": B_SHAPE}, "int4"),
        ["['w']", "(64, 256)"],
    ),
}


@pytest.mark.parametrize("case", FOREIGN)
def test_a_quantized_state_for_other_params_is_refused(case):
    build, words = FOREIGN[case]
    state = build()
    with pytest.raises(ValueError) as error:
        adamx.scale_by_adam(**INT8).update(_grads(PARAMS, 0), state)
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_a_quantized_state_fed_to_a_float_state_transform_is_refused():
    state = adamx.scale_by_adam(**INT8).init(PARAMS)
    with pytest.raises(ValueError, match=re.escape("['w']")):
        adamx.scale_by_adam().update(_grads(PARAMS, 0), state)


# --------------------------------------------------------- end to end: digits
#
# A 64-128-128-10 MLP (its two larger kernels, 8192 and 16384 values, get 8-bit
# state; the rest stays float32) trained full-batch for 150 steps of
# adamx.adam(3e-3) on scikit-learn's bundled digits, once per storage kind from
# the same start. The loss adds an L2 term, 1e-4 * sum |W|^2, so that its
# minimum is not 0: without it the loss heads to 0 and a relative difference
# of two tiny losses measures little (float32 runs from different seeds then
# end 30% apart). The memory benchmark's targets (examples/state_memory.py:
# int8 within 2% of float32, bfloat16 within 1%) are for 300 minibatch steps
# of a wider model; this short run asks for the weak form, 10% and 5%.
# Measured here: int8 -0.9%, bfloat16 -0.4%, stochastic rounding -0.1%. (The
# 8-bit runs end lower, not higher, and by more elsewhere: with one hidden
# layer, or without the L2 term, int8 ends 3-17% below float32 over five
# seeds, where bfloat16 stays within 2%.)

DIGITS_STEPS = 150
DIGITS_TOLERANCE = {"bfloat16": 0.05, "stochastic": 0.05, "int8": 0.10}
DIGITS_KINDS = ("float32", *DIGITS_TOLERANCE)


@functools.cache
def _digits():
    """{kind: (initial loss, final loss, optimizer state)}, trained in one jit."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = jnp.asarray(data.data / 16.0, jnp.float32)
    y = jnp.asarray(data.target, jnp.int32)
    rng = np.random.default_rng(0)
    params = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise((64, 128, 128, 10))):
        scale = np.sqrt(2.0 / fan_in)
        weights = scale * rng.normal(size=(fan_in, fan_out))
        params[f"w{i}"] = jnp.asarray(weights, jnp.float32)
        params[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)

    def loss(params):
        h = x
        for i in range(3):
            h = h @ params[f"w{i}"] + params[f"b{i}"][None, :]
            if i < 2:
                h = jax.nn.relu(h)
        data_loss = optax.softmax_cross_entropy_with_integer_labels(h, y).mean()
        return data_loss + 1e-4 * sum(jnp.sum(params[f"w{i}"] ** 2) for i in range(3))

    optimizers = [
        adamx.adam(3e-3, mu_dtype=STORAGE_KINDS[k], nu_dtype=STORAGE_KINDS[k])
        for k in DIGITS_KINDS
    ]

    @jax.jit
    def train(params):
        def body(runs, _):
            new = []
            for tx, (p, state) in zip(optimizers, runs, strict=True):
                updates, state = tx.update(jax.grad(loss)(p), state, p)
                new.append((optax.apply_updates(p, updates), state))
            return new, None

        start = [(params, tx.init(params)) for tx in optimizers]
        runs, _ = jax.lax.scan(body, start, None, length=DIGITS_STEPS)
        return loss(params), [(loss(p), state) for p, state in runs]

    initial, runs = train(params)
    return {
        kind: (float(initial), float(final), state)
        for kind, (final, state) in zip(DIGITS_KINDS, runs, strict=True)
    }


def test_digits_float32_run_learns():
    initial, final, _ = _digits()["float32"]
    assert initial > 2.0 and final < 0.1


@pytest.mark.parametrize("kind", DIGITS_TOLERANCE)
def test_digits_narrow_state_reaches_the_float32_loss(kind):
    _, final, state = _digits()[kind]
    _, reference, _ = _digits()["float32"]
    assert abs(final / reference - 1) <= DIGITS_TOLERANCE[kind], (final, reference)
    kernels = [m["w1"] for _, m in moments(state)]  # the run used the narrow state
    if kind == "int8":
        assert all(isinstance(k, adamx.QuantizedArray) for k in kernels)
    else:
        assert all(k.dtype == jnp.bfloat16 for k in kernels)
