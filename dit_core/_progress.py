"""Progress bars (tqdm) that stay quiet when asked to."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(*, total: int, desc: str, disable: bool = False, unit: str = "it"):
    """A tqdm bar on stderr; redrawn at most every 5 s when stderr is not a terminal (logs, CI)."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=disable, unit=unit, dynamic_ncols=True, leave=False,
                mininterval=0.1 if interactive else 5.0)
