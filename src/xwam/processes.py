"""Errors that cross process boundaries (collection and evaluation workers).

``multiprocessing`` sends a worker's exception to the parent by pickling it. An exception class whose
``__init__`` takes other arguments than its message cannot be rebuilt there: the pool's result
thread dies and the parent waits forever. Workers raise :func:`portable_error` of what went wrong.
"""

from __future__ import annotations

import pickle


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure to rebuild means it cannot cross
        return RuntimeError(f"{type(exc).__name__}: {exc}")
