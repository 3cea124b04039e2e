"""Layout rules every report figure follows, so that each one reads at page width.

- Panels sit in a grid of ``PANEL_COLUMNS`` columns, never a strip; a figure is at most about
  ``MAX_WIDTH_PX`` wide at the saved resolution.
- A panel holds at most ``MAX_SERIES`` series: more are split over several panels, each repeating the
  reference series (plain LoRA) so every panel can be read against it.
- Series with identical values (plain LoRA and SHE-LoRA at batch 16, say) would hide one another: the
  later one is drawn dashed with hollow markers over the earlier one's wide, pale line, and its legend
  entry names the series it equals.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANEL_COLUMNS = 2
MAX_SERIES = 6
DPI = 120
MAX_WIDTH_PX = 1600
PANEL_SIZE = (5.6, 4.0)  # inches: two panels and an outside legend stay within MAX_WIDTH_PX


def chunks(keys: Sequence[Hashable], pinned: Sequence[Hashable] = (), limit: int = MAX_SERIES) -> list[list[Hashable]]:
    """``keys`` in groups of at most ``limit``; keys in ``pinned`` (references) open every group."""
    pins = [k for k in keys if k in pinned]
    rest = [k for k in keys if k not in pinned]
    room = max(1, limit - len(pins))
    if not rest:
        return [pins] if pins else []
    return [pins + rest[i:i + room] for i in range(0, len(rest), room)]


def panel_title(title: str, part: int, parts: int) -> str:
    return title if parts == 1 else f"{title} ({part}/{parts})"


def twins(series: Mapping[Hashable, Sequence[tuple[float, float]]], digits: int = 3) -> dict[Hashable, Hashable]:
    """For each series equal to an earlier one (same points to ``digits`` decimals), that earlier series."""
    seen: dict[tuple, Hashable] = {}
    out: dict[Hashable, Hashable] = {}
    for key, points in series.items():
        sig = tuple(sorted((round(float(x), digits), round(float(y), digits)) for x, y in points
                           if not (math.isnan(float(x)) or math.isnan(float(y)))))
        if not sig:
            continue
        if sig in seen:
            out[key] = seen[sig]
        else:
            seen[sig] = key
    return out


def line_style(key: Hashable, twin_of: Mapping[Hashable, Hashable], base: str = "-") -> dict[str, Any]:
    """Matplotlib keywords that keep coinciding series apart: the first of a set of equal series is wide
    and pale, each later one thin, dashed and hollow-marked on top."""
    if key in twin_of:
        return {"ls": (0, (4, 3)), "lw": 1.2, "marker": "o", "ms": 7, "mfc": "none", "zorder": 5}
    if key in set(twin_of.values()):
        return {"ls": base, "lw": 4.0, "alpha": 0.45, "marker": "o", "ms": 4, "zorder": 3}
    return {"ls": base, "lw": 1.5, "marker": "o", "ms": 3, "zorder": 4}


def twin_label(label: str, key: Hashable, twin_of: Mapping[Hashable, Hashable], names: Mapping[Hashable, str]) -> str:
    return f"{label} = {names.get(twin_of[key], twin_of[key])}" if key in twin_of else label


def panels(n: int, width: float = PANEL_SIZE[0], height: float = PANEL_SIZE[1], cols: int = PANEL_COLUMNS,
           layout: str | None = None) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels in a grid of ``cols`` columns; unused cells hidden. ``layout="constrained"``
    for figures with a shared colorbar (``save`` then leaves the layout alone)."""
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout=layout)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def save(fig: Any, path: Path) -> None:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
