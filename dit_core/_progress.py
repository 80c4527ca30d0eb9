"""Progress bars (tqdm) that stay quiet when asked to."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(*, total: int, desc: str, disable: bool = False, unit: str = "it"):
    return tqdm(total=total, desc=desc, disable=disable, unit=unit, dynamic_ncols=True, leave=False)
