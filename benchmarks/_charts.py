"""Charts of benchmark results: ns per send of asignals beside its peers and the plain-Python limit.

Used by ``benchmarks/dispatch.py --chart PATH`` (PNG or SVG, chosen by the suffix). Needs
matplotlib (in the ``benchmark`` extra); it is imported only when a chart is asked for, so the
benchmarks run without it.

A chart has one panel per row of the benchmark (sync, sender-filtered, async, suspending). The
x axis is the number of receivers, the y axis ns per send on a log scale (100 receivers cost
about 100 times one). The limit is the dashed black line every other line is measured against;
asignals is the thick line, each peer a thin one, and each asignals point carries its ratio to
the limit, the figure the tables report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

ASIGNALS = "asignals"
LIMIT = "limit"
_FAMILIES = {
    "Django": "#2e7d32",
    "blinker": "#ef6c00",
    "psygnal": "#8e24aa",
    "aiosignal": "#6d4c41",
}
"""One colour per peer library, the same in every panel."""
_MARKERS = ("o", "s", "^", "D", "v", "P")
_COLUMNS = 2


class RowLike(Protocol):
    """What a chart needs of one benchmark row (``dispatch.Row`` fits)."""

    key: str
    title: str
    sizes: tuple[int, ...]


class HasNs(Protocol):
    ns: float


def _ratio(a: HasNs, b: HasNs) -> float:
    """The ratio the tables print: ``Measurement / Measurement`` is the median per-round ratio."""
    try:
        ratio = a / b  # type: ignore[operator]
    except TypeError:
        return a.ns / b.ns
    return float(ratio)


def chart_path(path: str | Path, loop: str, several: bool) -> Path:
    """``path`` itself for a single loop, else ``path`` with the loop's name before the suffix."""
    out = Path(path)
    if not several:
        return out
    return out.with_name(f"{out.stem}-{loop.split()[0]}{out.suffix}")


def grid_chart(
    path: str | Path,
    results: Mapping[tuple[str, int], Mapping[str, HasNs]],
    rows: Sequence[RowLike],
    *,
    peers: Iterable[str],
    limit_of: Callable[[Any, int], str],
    title: str,
    caption: str = "",
) -> Path:
    """Write the chart of one loop's results to ``path`` and return the path.

    ``results[row.key, n][contender].ns`` is the median ns per send of a contender; the
    contenders drawn are asignals, those named in ``peers`` and the cell's limit
    (``limit_of(row, n)``, which may differ per n: the empty coroutine for n = 0).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.size": 10, "legend.fontsize": 8.5}):
        fig = _draw(plt, results, rows, sorted(p for p in peers if p != ASIGNALS), limit_of)
        fig.suptitle(title)
        if caption:
            fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8.5, color="#555")
        fig.tight_layout(rect=(0, 0.04 if caption else 0, 1, 1))
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)
    return out


def _draw(
    plt: Any,
    results: Mapping[tuple[str, int], Mapping[str, HasNs]],
    rows: Sequence[RowLike],
    peers: list[str],
    limit_of: Callable[[Any, int], str],
) -> Any:
    """One panel per row: the limit dashed, each peer thin, asignals thick with its ratios."""
    grid_rows = -(-len(rows) // _COLUMNS)
    fig, axes = plt.subplots(
        grid_rows, _COLUMNS, figsize=(5.0 * _COLUMNS, 4.0 * grid_rows), squeeze=False
    )
    flat = [ax for line in axes for ax in line]
    for ax in flat[len(rows) :]:
        ax.set_visible(False)
    for ax, row in zip(flat, rows, strict=False):
        cells = [(n, results[row.key, n]) for n in row.sizes]
        x = list(range(len(cells)))
        limit = [cell[limit_of(row, n)].ns for n, cell in cells]
        main = limit_of(row, row.sizes[-1])
        others = [f"N = {n}: {limit_of(row, n)}" for n in row.sizes if limit_of(row, n) != main]
        label = f"{LIMIT}: {main}" + (f" ({', '.join(others)})" if others else "")
        ax.plot(x, limit, "k--", linewidth=1.6, label=label, zorder=3)
        for index, peer in enumerate(peers):
            points = [(i, cell[peer].ns) for i, (_, cell) in enumerate(cells) if peer in cell]
            if not points:
                continue
            ax.plot(
                [i for i, _ in points],
                [y for _, y in points],
                marker=_MARKERS[index % len(_MARKERS)],
                color=_FAMILIES.get(peer.split()[0]),
                linewidth=1,
                markersize=4,
                alpha=0.8,
                label=peer,
            )
        if all(ASIGNALS in cell for _, cell in cells):
            ours = [cell[ASIGNALS].ns for _, cell in cells]
            ax.plot(x, ours, "-o", color="#3f51b5", linewidth=2.8, label=ASIGNALS, zorder=4)
            for i, (n, cell) in enumerate(cells):
                ax.annotate(
                    f"{_ratio(cell[ASIGNALS], cell[limit_of(row, n)]):.2f}x",
                    (i, ours[i]),
                    textcoords="offset points",
                    xytext=(0, 7),
                    ha="center",
                    fontsize=9,
                    color="#3f51b5",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                    zorder=5,
                )
        ax.set_yscale("log")
        ax.set_xticks(x, [str(n) for n, _ in cells])
        ax.set_xlabel("receivers")
        ax.set_ylabel("ns per send (log scale)")
        ax.margins(y=0.15)
        ax.set_title(row.title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="best", framealpha=0.9)
    return fig
