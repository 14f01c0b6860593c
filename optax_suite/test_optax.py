"""Stands for optax's installed test modules; ``conftest.py`` collects them here.

pytest does not import this file as a test module: ``conftest.py`` puts one
collector per optax test module (``optax._src.alias_test``, ...) in its place,
so test ids read ``optax_suite/test_optax.py::optax._src.alias_test::...``.
"""
