"""Argument checks and seeds shared by the modules: one home, so every command refuses a bad
count or seed with the same message."""
from __future__ import annotations

import numbers

import numpy as np


def is_int(value) -> bool:
    """An integer (Python or NumPy), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number (Python or NumPy, integer or float), and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_count(name: str, value, minimum: int = 1) -> int:
    """`value` as an int if it is an integer >= minimum; ValueError naming `name` otherwise."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} = {value!r} must be an integer >= {minimum}")
    return int(value)


def seed64(seed) -> int:
    """A 64-bit seed for the C++ core and NumPy generators; None draws one from the OS."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    if not is_int(seed) or not 0 <= seed < 2**64:
        raise ValueError(f"seed = {seed!r} must be None or an integer in [0, 2**64)")
    return int(seed)
