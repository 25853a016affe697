"""The daily digest's chart: a 14-day trend of new, resolved and open requests, as PNG bytes.

Why it is built this way:

* **matplotlib, object-oriented, Agg only.** The chart is a ``Figure`` with
  its own ``FigureCanvasAgg``; ``pyplot`` is never imported. pyplot keeps a
  process-wide list of open figures and picks a GUI backend, neither of
  which belongs in a server: here nothing is registered anywhere, the figure
  is unreachable when the function returns, and no global setting
  (``rcParams``, ``matplotlib.use``) is read or changed beyond matplotlib's
  defaults. That makes it safe enough to call from a worker thread (separate
  figures share nothing mutable; matplotlib keeps its FreeType font objects
  per thread). A figure is a web of reference cycles, so its memory (about
  1.5 MB of pixels and the artists) goes back only at the garbage
  collector's next full collection, not at return.
* **Imported lazily.** matplotlib and numpy take about half a second and
  55 MB of resident memory to import (measured on this project's machine);
  the serve process makes a digest once a day, so it pays that on the first
  digest rather than at every start-up, and importing this module costs a
  few milliseconds.
* **Deterministic.** ``metadata={"Software": None}`` drops the one text
  chunk matplotlib writes (its version); the PNG has no timestamp, and
  dates are labelled with a fixed English month table instead of
  ``strftime("%b")``, which follows the process locale. The same input gives
  the same bytes with the same matplotlib, FreeType and Pillow (another
  version may draw text a little differently), so a digest can be tested
  and de-duplicated by content.
* **Sized for a Slack preview.** 9 x 4 inches at 100 dpi, 900 x 400 pixels,
  laid out with the constrained layout (no ``bbox_inches="tight"``, which
  would change the size with the labels).
* **Two scales when they differ.** New and resolved are per-day counts
  (bars); the backlog is a running total (a line) that is often an order of
  magnitude larger, so it gets its own axis on the right, in its own colour,
  when its peak is more than twice the bars'. Otherwise one axis serves all
  three and nothing has to be read off two scales.

matplotlib writes a font cache on first import. It goes to ``MPLCONFIGDIR``
when that is set, otherwise to ``~/.cache/matplotlib``; when home is
missing or read-only (or ``MPLCONFIGDIR`` unwritable), matplotlib itself
falls back to a fresh ``matplotlib-*`` directory under the temporary
directory: it logs a warning, sets ``MPLCONFIGDIR`` in ``os.environ`` to
it, rebuilds the cache there (a few hundred milliseconds, once per
process) and deletes it at exit; the chart comes out the same. So nothing
here sets it: a deployment with a read-only home sets ``MPLCONFIGDIR`` to a
writable directory to keep the cache between runs and the warning out of
the log.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import date

WIDTH_IN, HEIGHT_IN, DPI = 9, 4, 100
MAX_DATE_LABELS = 14
MAX_TITLE = 80
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
NEW_COLOUR, RESOLVED_COLOUR, BACKLOG_COLOUR = "#4C78A8", "#54A24B", "#E45756"


def short_date(day: date) -> str:
    """``Nov 23``, whatever the locale."""
    return f"{MONTHS[day.month - 1]} {day.day}"


def trend_chart(
    days: Sequence[date],
    opened: Sequence[int],
    resolved: Sequence[int],
    backlog: Sequence[int],
    *,
    title: str,
) -> bytes:
    """A PNG (900 x 400) of requests opened and resolved each day (bars) and the backlog (a line).

    ``days[i]`` is the day of ``opened[i]``, ``resolved[i]`` and
    ``backlog[i]`` (the requests still open at its end). Raises ValueError
    when there are no days or the four sequences differ in length.
    """
    lengths = {"days": len(days), "opened": len(opened), "resolved": len(resolved), "backlog": len(backlog)}
    if len(set(lengths.values())) != 1:
        found = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"trend_chart needs one value per day in every series; got {found}")
    if not days:
        raise ValueError("trend_chart needs at least one day; got empty sequences")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n = len(days)
    x = list(range(n))
    bar_peak = max(max(opened), max(resolved), 1)
    line_peak = max(max(backlog), 1)

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bar_width = 0.4  # two bars side by side fill 0.8 of a day
    new_bars = ax.bar([i - bar_width / 2 for i in x], list(opened), bar_width, color=NEW_COLOUR, label="New")
    done_bars = ax.bar([i + bar_width / 2 for i in x], list(resolved), bar_width, color=RESOLVED_COLOUR, label="Resolved")

    separate = line_peak > 2 * bar_peak
    line_ax = ax.twinx() if separate else ax
    (line,) = line_ax.plot(x, list(backlog), color=BACKLOG_COLOUR, linewidth=2.2, marker="o", markersize=4,
                           label=f"Backlog (open: {backlog[-1]})")

    ax.set_ylim(0, (bar_peak if separate else max(bar_peak, line_peak)) * 1.12)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Requests per day" if separate else "Requests")
    ax.grid(axis="y", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    if separate:
        line_ax.set_ylim(0, line_peak * 1.12)
        line_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        line_ax.set_ylabel("Open requests", color=BACKLOG_COLOUR)
        line_ax.tick_params(axis="y", colors=BACKLOG_COLOUR)
        line_ax.spines["right"].set_color(BACKLOG_COLOUR)
        line_ax.spines["top"].set_visible(False)
    else:
        ax.spines["right"].set_visible(False)
    ax.spines["top"].set_visible(False)

    step = math.ceil(n / MAX_DATE_LABELS)
    ticks = x[::-1][::step][::-1]  # always label the last (latest) day
    ax.set_xticks(ticks, [short_date(days[i]) for i in ticks])
    ax.set_xlim(-0.6, n - 0.4)
    ax.tick_params(axis="x", length=0)

    # Title and legend on rows of their own, so that a long title cannot run into the legend.
    if len(title) > MAX_TITLE:  # one line of 13 pt bold fits about 85 characters at 900 px
        title = title[: MAX_TITLE - 1].rstrip() + "\u2026"
    fig.suptitle(title, x=0.01, ha="left", fontsize=13, fontweight="bold")
    ax.legend(handles=[new_bars, done_bars, line], loc="lower left", bbox_to_anchor=(0.0, 1.0),
              ncols=3, frameon=False, fontsize=10, borderaxespad=0.2)

    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()
