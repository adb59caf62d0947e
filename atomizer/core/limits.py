"""Bounds on the work one input or one request may ask for, checked before the work starts.

An image's atom count (pixels x bands, summed over its bands) is known from its header, so an input too
large to tokenize in memory is refused before any pixel is read, in one line that gives the count and the
limit. The limit is configurable: ``ATOMIZER_MAX_ATOMS`` in the environment, or ``limit=`` per call.
"""

from __future__ import annotations

import os

#: Default atom limit of one input: 2^31 - 1, the largest count an int32 offset could address, and about
#: 8.6 GB of float32 values; raise it with ``ATOMIZER_MAX_ATOMS`` on a machine that can hold more.
DEFAULT_MAX_ATOMS = 2**31 - 1


class InputTooLargeError(ValueError):
    """An input holds more atoms (or windows, or bytes) than the configured limit."""


def max_atoms(limit: int | None = None) -> int:
    """The atom limit in force: ``limit`` if given, else ``ATOMIZER_MAX_ATOMS``, else the default."""
    if limit is not None:
        return int(limit)
    env = os.environ.get("ATOMIZER_MAX_ATOMS")
    if env:
        try:
            value = int(env.replace("_", ""))
        except ValueError:
            raise InputTooLargeError(f"ATOMIZER_MAX_ATOMS must be a whole number, got {env!r}") from None
        if value < 1:
            raise InputTooLargeError(f"ATOMIZER_MAX_ATOMS must be positive, got {value}")
        return value
    return DEFAULT_MAX_ATOMS


def check_atoms(n_atoms: int, what: str = "the input", limit: int | None = None) -> int:
    """Refuse ``n_atoms`` above the limit in one line (count and limit named); return the count otherwise."""
    bound = max_atoms(limit)
    if n_atoms > bound:
        raise InputTooLargeError(
            f"{what} holds {n_atoms:,} atoms, above the limit of {bound:,} "
            "(set ATOMIZER_MAX_ATOMS, or the command's limit option, to allow more)"
        )
    return int(n_atoms)
