"""optax tests that fail on purpose: where adamx differs from optax, and why.

Each entry names a test inside the suite (``fnmatch`` pattern on
``optax._src.alias_test::AliasTest::test_explicit_dtype25``), a regular
expression its failure must match, and the README row that explains it. A
listed test whose failure matches is reported as xfailed; one that fails
otherwise still fails; one that passes fails too, so the list stays true.
absl numbers parameterized tests in product order: the comment on each entry
says which parameters the number stands for.
"""

from __future__ import annotations

import fnmatch
from typing import NamedTuple


class Difference(NamedTuple):
    """A deliberate difference seen by one or more optax tests."""

    test: str
    match: str
    row: str


# README table rows, by key.
ROWS = {
    "int-leaves": (
        "Integer parameter leaves are refused with a TypeError naming the leaf "
        "(wrap the transform in optax.masked); optax makes moments for them."
    ),
    "exact-numerics": (
        "Bias correction and the step are computed in float32 or wider and cast "
        "once, so float32 results sit closer to float64 than optax's; optax "
        "tests that compare two optax float32 paths at rtol 1e-6 see the gap."
    ),
    "mu-dtype-precision": (
        "mu_dtype names a precision and the moment's kind follows the "
        "parameter: a real parameter's m stays real under mu_dtype=complex64, "
        "a complex parameter's m stays complex under mu_dtype=float32, and "
        "bfloat16 (no complex counterpart) is refused for complex parameters; "
        "optax stores what mu_dtype says, dropping the imaginary part."
    ),
}

_ALIAS = "optax._src.alias_test::AliasTest::"
# test_explicit_dtype<n>: n = (params * 4 + state) * 3 + opt, with params and
# state in (bfloat16, float32, complex64, None) and opt in (sgd_mom, adam, adamw).
_REAL_M = r"dtype\('complex64'\) != dtype\('float32'\)"
_COMPLEX_M = r"dtype\('float32'\) != dtype\('complex64'\)"
_NO_BF16 = r"complex parameter's first moment cannot be stored as bfloat16"
_TOLERANCE = r"Not equal to tolerance"

DIFFERENCES: tuple[Difference, ...] = (
    # Real parameters (bfloat16, float32, default), state complex64.
    *(
        Difference(f"{_ALIAS}test_explicit_dtype{n}", _REAL_M, "mu-dtype-precision")
        for n in (7, 8, 19, 20, 43, 44)
    ),
    # Complex parameters, state bfloat16, then float32.
    *(
        Difference(f"{_ALIAS}test_explicit_dtype{n}", _NO_BF16, "mu-dtype-precision")
        for n in (25, 26)
    ),
    *(
        Difference(f"{_ALIAS}test_explicit_dtype{n}", _COMPLEX_M, "mu-dtype-precision")
        for n in (28, 29)
    ),
    # chain(adam, t).init({'a': 1, 'b': 2}): integer leaves.
    Difference(
        "optax._src.combine_test::ExtraArgsTest::test_extra_args",
        r"has dtype int32; adamx optimizes floating",
        "int-leaves",
    ),
    Difference(
        "optax.transforms._combining_test::ExtraArgsTest::test_extra_args",
        r"has dtype int32; adamx optimizes floating",
        "int-leaves",
    ),
    # scale_by_rms(bias_correction=True) vs scale_by_adam(b1=0), rtol 1e-6:
    # both optax float32 results are 7e-6 from float64, adamx's 9e-8.
    Difference(
        "optax._src.transform_test::TransformTest::test_rms_match_adam",
        _TOLERANCE,
        "exact-numerics",
    ),
    # schedule_free_adamw vs schedule_free(adamw(b1=0)), atol 1e-6: optax's
    # float32 paths are 4.5e-6 from float64, the one through adamx 2e-8.
    Difference(
        "optax.contrib._schedule_free_test::ScheduleFreeTest::test_schedule_free_adamw",
        _TOLERANCE,
        "exact-numerics",
    ),
)


def find(test_id: str) -> Difference | None:
    """The listed difference for the test ``test_id``, if any."""
    for difference in DIFFERENCES:
        if fnmatch.fnmatchcase(test_id, difference.test):
            return difference._replace(row=f"{difference.row}: {ROWS[difference.row]}")
    return None
