"""What the benchmark scripts share: a cProfile summary of one run (`--profile`)."""

import cProfile
import io
import pstats
from collections.abc import Callable
from typing import Any


def cumulative_profile(run: Callable[[], Any], lines: int) -> str:
    """cProfile of one call of `run`: the `lines` functions with the most cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(lines)
    return out.getvalue()
