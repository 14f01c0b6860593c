"""adamx's transformations, one module per algorithm family.

These modules evaluate their annotations (no ``from __future__ import
annotations``): code that reads a signature, optax's own test helpers among
it, finds ``optax.ScalarOrSchedule`` itself on ``learning_rate``, not a string.
"""
