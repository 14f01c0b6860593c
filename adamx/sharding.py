"""Shardings of optimizer state, for ``jax.jit`` and for restoring checkpoints.

:func:`state_shardings` answers one question for any optax transformation:
where does each leaf of ``tx.init(params)`` live when the parameters are
sharded? The answer comes from the compiler: ``jax.jit(tx.init)`` is lowered
and compiled for the parameters' shardings, and its output shardings are read
back. adamx computes every moment from its parameter, so each moment, and
both the ``codes`` and the ``scales`` of an 8-bit moment, comes out sharded
like its parameter, and scalars (step counts, schedule states) replicated.

Pass the result as ``out_shardings`` of ``jax.jit(tx.init)`` and of the
jitted update, or use :func:`abstract_state` as the target when restoring a
checkpoint, so each host reads only its own shards.

With ``zero_axis`` the state is also split over a mesh axis, ZeRO stage 1
style: parameters and gradients stay replicated over data parallelism while
each device keeps only its share of the moments.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from adamx.storage import QuantizedArray

__all__ = ["abstract_state", "state_shardings"]

_NONE = object()  # a state leaf that matches no parameter


def state_shardings(
    tx: Any,
    params: Any,
    param_shardings: Any = None,
    *,
    zero_axis: str | tuple[str, ...] | None = None,
) -> Any:
    """A ``jax.sharding.Sharding`` for each leaf of ``tx.init(params)``.

    ``jax.jit(tx.init)`` is compiled for the parameters' shardings (nothing
    runs) and its output shardings are returned, shaped like the state: every
    adamx moment is sharded like its parameter, and an 8-bit moment's
    ``scales``, shaped ``(*shape[:-1], blocks)``, take the parameter's
    ``PartitionSpec`` too, so the mesh axis that splits the parameter's last
    axis splits its blocks. Scalars (counts, schedule states) are replicated
    on the parameters' mesh. Any optax chain works; where the compiler cannot
    tie a leaf to the parameters (an ``init`` that returns constants, such as
    optax's ``zeros_like`` moments) or replicates it, a leaf in a subtree shaped
    like the parameters takes its parameter's sharding.

    Args:
      tx: an ``optax.GradientTransformation`` (anything with ``init``).
      params: the parameters: arrays, or ``jax.ShapeDtypeStruct`` (with a
        ``sharding``, or with ``param_shardings``) when they do not exist yet,
        as when restoring a checkpoint.
      param_shardings: the parameters' shardings, overriding theirs: a tree
        shaped like ``params`` or one ``Sharding`` for all. Build a
        ``NamedSharding(mesh, spec)`` from a ``PartitionSpec``.
      zero_axis: a mesh axis name (or a tuple of them) to split the state over
        as well, ZeRO stage 1 style. Each leaf not split over it yet is split
        along its first unsplit axis whose length the axis size divides, or
        failing that further along an axis split already; scalars and leaves
        with no such axis stay as they are. Parameters and updates keep their
        own shardings, so a jitted update with these as ``out_shardings``
        all-gathers each parameter's update over ``zero_axis``.

    Returns:
      A pytree of ``Sharding`` with the structure of ``tx.init(params)``, for
      ``out_shardings`` of ``jax.jit(tx.init)`` and of ``jax.jit(tx.update)``.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, adamx
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> from adamx.sharding import state_shardings
      >>> mesh = jax.make_mesh((len(jax.devices()),), ("model",))
      >>> sharding = NamedSharding(mesh, P(None, "model"))
      >>> params = {"w": jax.device_put(np.ones((4, 1024), np.float32), sharding)}
      >>> tx = adamx.adam(1e-3, mu_dtype="int8")
      >>> shardings = state_shardings(tx, params)
      >>> shardings[0].mu["w"].scales.spec, shardings[0].count.spec
      (P(None, 'model'), P())
      >>> with jax.set_mesh(mesh):
      ...     state = jax.jit(tx.init, out_shardings=shardings)(params)
      >>> state[0].mu["w"].codes.sharding == sharding
      True
    """
    return jax.tree.map(
        lambda leaf: leaf.sharding,
        abstract_state(tx, params, param_shardings, zero_axis=zero_axis),
    )


def abstract_state(
    tx: Any,
    params: Any,
    param_shardings: Any = None,
    *,
    zero_axis: str | tuple[str, ...] | None = None,
) -> Any:
    """``tx.init(params)`` as ``jax.ShapeDtypeStruct`` leaves with shardings.

    The shapes and dtypes of the state and the shardings of
    :func:`state_shardings` (same arguments), computed without running
    ``init``: the target for restoring a checkpoint onto a mesh, e.g.
    ``orbax.checkpoint.args.StandardRestore(abstract_state(tx, params))``.

    >>> import jax, jax.numpy as jnp, adamx
    >>> from adamx.sharding import abstract_state
    >>> params = {"w": jax.ShapeDtypeStruct((64, 128), jnp.bfloat16)}
    >>> target = abstract_state(adamx.adam(1e-3), params)
    >>> target[0].mu["w"].shape, target[0].mu["w"].dtype
    ((64, 128), dtype(bfloat16))
    """
    abstract = _abstract_params(params, param_shardings)
    mesh = _mesh_of(abstract)
    names = _zero_axis_names(zero_axis, mesh)
    with _mesh_context(mesh):
        lowered = jax.jit(tx.init).lower(abstract)
        compiled_shardings = lowered.compile().output_shardings
    shapes = lowered.out_info
    structural = _param_shardings_by_structure(shapes, abstract)
    shardings = jax.tree.map(
        lambda shape, compiled, by_structure: _chosen(
            mesh, shape, compiled, by_structure
        ),
        shapes,
        compiled_shardings,
        structural,
    )
    if names:
        shardings = jax.tree.map(
            lambda sharding, shape: _split_moment(sharding, shape, names),
            shardings,
            shapes,
            is_leaf=_is_quantized,
        )
    return jax.tree.map(
        lambda shape, sharding: jax.ShapeDtypeStruct(
            shape.shape, shape.dtype, sharding=sharding
        ),
        shapes,
        shardings,
    )


def _abstract_params(params: Any, param_shardings: Any) -> Any:
    """``params`` as ``ShapeDtypeStruct`` leaves carrying their shardings."""

    def abstract(leaf, sharding):
        if sharding is None:
            sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, PartitionSpec):
            raise TypeError(
                f"state_shardings: got PartitionSpec {sharding} for a parameter; "
                "pass a Sharding such as NamedSharding(mesh, spec)"
            )
        if sharding is not None and not isinstance(sharding, Sharding):
            raise TypeError(
                f"state_shardings: {sharding!r} is not a jax.sharding.Sharding"
            )
        dtype = leaf.dtype if hasattr(leaf, "dtype") else jnp.result_type(leaf)
        return jax.ShapeDtypeStruct(np.shape(leaf), dtype, sharding=sharding)

    if param_shardings is None or isinstance(param_shardings, Sharding):
        return jax.tree.map(lambda leaf: abstract(leaf, param_shardings), params)
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(param_shardings)):
        return abstract(None, param_shardings)  # not a Sharding: a TypeError
    return jax.tree.map(abstract, params, param_shardings)


def _mesh_of(abstract: Any) -> jax.sharding.Mesh | None:
    """The mesh of the first parameter with a ``NamedSharding``, or None."""
    for leaf in jax.tree.leaves(abstract):
        if isinstance(leaf.sharding, NamedSharding) and isinstance(
            leaf.sharding.mesh, jax.sharding.Mesh
        ):
            return leaf.sharding.mesh
    return None


def _mesh_context(mesh: jax.sharding.Mesh | None):
    """``jax.set_mesh(mesh)``, which tracing needs under explicit mesh axes."""
    if mesh is None or not hasattr(jax, "set_mesh"):
        return contextlib.nullcontext()
    return jax.set_mesh(mesh)


def _param_shardings_by_structure(shapes: Any, abstract: Any) -> Any:
    """Each state leaf's parameter sharding where a subtree is shaped like params.

    A subtree matches when it has the parameters' tree structure (an 8-bit
    moment counting as one leaf) and each leaf the shape of its parameter.
    Other leaves get ``_NONE``.
    """
    params_leaves, params_def = jax.tree.flatten(abstract)

    def like_params(node) -> bool:
        leaves, treedef = jax.tree.flatten(node, is_leaf=_is_quantized)
        if treedef != params_def:
            return False
        return all(
            _shape(leaf) == tuple(param.shape)
            for leaf, param in zip(leaves, params_leaves, strict=True)
        )

    def assign(node):
        if not like_params(node):
            return jax.tree.map(lambda _: _NONE, node)
        mapped = []
        leaves = jax.tree.leaves(node, is_leaf=_is_quantized)
        for leaf, param in zip(leaves, params_leaves, strict=True):
            sharding = _NONE if param.sharding is None else param.sharding
            quantized = _is_quantized(leaf)
            mapped.append(QuantizedArray(sharding, sharding) if quantized else sharding)
        return jax.tree.unflatten(params_def, mapped)

    return jax.tree.map(assign, shapes, is_leaf=like_params)


def _shape(leaf: Any) -> tuple[int, ...]:
    if isinstance(leaf, QuantizedArray):
        return tuple(leaf.codes.shape)
    return tuple(np.shape(leaf))


def _chosen(
    mesh: jax.sharding.Mesh | None,
    shape: jax.ShapeDtypeStruct,
    compiled: Sharding,
    by_structure: Any,
) -> Sharding:
    """One leaf's sharding: the compiler's, or its parameter's where that is better."""
    if mesh is None:
        return compiled
    replicated = NamedSharding(mesh, PartitionSpec())
    if len(shape.shape) == 0:
        return replicated
    on_mesh = compiled.device_set == set(mesh.devices.flat)
    if by_structure is not _NONE and (
        not on_mesh
        or (compiled.is_fully_replicated and not by_structure.is_fully_replicated)
    ):
        return by_structure
    if not on_mesh or (
        compiled.is_fully_replicated and not isinstance(compiled, NamedSharding)
    ):
        return replicated
    return compiled


def _zero_axis_names(
    zero_axis: str | tuple[str, ...] | None, mesh: jax.sharding.Mesh | None
) -> tuple[str, ...]:
    """``zero_axis`` as a tuple of mesh axis names, checked against ``mesh``."""
    if zero_axis is None:
        return ()
    names = (zero_axis,) if isinstance(zero_axis, str) else tuple(zero_axis)
    if mesh is None:
        raise ValueError(
            f"state_shardings(zero_axis={zero_axis!r}): the parameters have no "
            "NamedSharding, so there is no mesh to split the state over"
        )
    for name in names:
        if name not in mesh.shape:
            raise ValueError(
                f"state_shardings(zero_axis={zero_axis!r}): the mesh has axes "
                f"{tuple(mesh.shape)}, not {name!r}"
            )
    return names


def _is_quantized(node: Any) -> bool:
    return isinstance(node, QuantizedArray)


def _split_moment(sharding: Any, shape: Any, names: tuple[str, ...]) -> Any:
    """One state leaf's sharding split over ``names`` too.

    An 8-bit moment's codes and scales are split alike, on an axis both
    divide, so each device keeps the scales of the codes it holds.
    """
    if _is_quantized(sharding):
        if sharding.codes != sharding.scales:
            return QuantizedArray(
                _split_over(sharding.codes, [shape.codes.shape], names),
                _split_over(sharding.scales, [shape.scales.shape], names),
            )
        split = _split_over(
            sharding.codes, [shape.codes.shape, shape.scales.shape], names
        )
        return QuantizedArray(split, split)
    return _split_over(sharding, [shape.shape], names)


def _split_over(
    sharding: Sharding, shapes: list[tuple[int, ...]], names: tuple[str, ...]
) -> Sharding:
    """``sharding`` also split over mesh axes ``names``, valid for each of ``shapes``.

    The first axis not split yet whose length the axes' size divides; else
    the first axis split already that divides further, with ``names`` as its
    minor part, so each device's piece lies inside the shard it had. The
    sharding is returned unchanged for scalars, for leaves split over
    ``names`` already, and where no axis divides.
    """
    ndim = len(shapes[0])
    if not isinstance(sharding, NamedSharding) or ndim == 0:
        return sharding
    mesh = sharding.mesh
    spec = list(sharding.spec) + [None] * (ndim - len(sharding.spec))
    held = [() if e is None else (e,) if isinstance(e, str) else tuple(e) for e in spec]
    if any(name in axes for axes in held for name in names):
        return sharding

    def size(axes):
        return int(np.prod([mesh.shape[name] for name in axes]))

    def divides(i, axes):
        return all(shape[i] % size(axes) == 0 for shape in shapes)

    zero = names[0] if len(names) == 1 else names
    for i in range(ndim):
        if not held[i] and divides(i, names):
            spec[i] = zero
            return NamedSharding(mesh, PartitionSpec(*spec))
    for i in range(ndim):
        if held[i] and divides(i, (*held[i], *names)):
            spec[i] = (*held[i], *names)
            return NamedSharding(mesh, PartitionSpec(*spec))
    return sharding
