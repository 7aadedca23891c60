"""The one phase timer: a block's wall time added to ``timings[name]`` (seconds), as the driver logs it
in ``timing/<name>``. A phase that runs twice in a step (dynamic sampling's rounds, a redo) adds up."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


@contextlib.contextmanager
def timed(timings: dict[str, float] | None, name: str | None) -> Iterator[None]:
    """Time the block into ``timings[name]``; ``timings`` or ``name`` None: untimed."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None and name is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
