"""The daily digest's chart: a 14-day trend of new, resolved and open requests, as PNG bytes.

Why it is built this way:

* **Pillow, drawn by hand.** The chart is bars, a line, two axes, a title
  and a legend: a few dozen rectangles, lines and labels on a 900 x 400
  canvas. Pillow draws and encodes them with 4 MB of imports; matplotlib,
  which drew it before, took 55 MB and half a second, in the process that
  files mail. Nothing global is read or changed, so a worker thread may
  call it.
* **Drawn at twice the size, then scaled down.** Pillow's lines and
  rectangles have hard edges; drawing at 1800 x 800 and resampling to
  900 x 400 smooths the line, the markers and the bars' edges.
* **Deterministic.** The font is Pillow's own (``ImageFont.load_default``,
  rendered by FreeType), not one found on the machine; the PNG carries no
  text chunk and no timestamp; dates are labelled with a fixed English month
  table instead of ``strftime("%b")``, which follows the process locale. The
  same input gives the same bytes with the same Pillow and FreeType, so a
  digest can be tested and de-duplicated by content.
* **Sized for a Slack preview.** 900 x 400 pixels; the title and the legend
  have rows of their own above the plot, so a long title cannot run into
  the legend.
* **Two scales when they differ.** New and resolved are per-day counts
  (bars); the backlog is a running total (a line) that is often an order of
  magnitude larger, so it gets its own axis on the right, in its own colour,
  when its peak is more than twice the bars'. Otherwise one axis serves all
  three and nothing has to be read off two scales.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

WIDTH, HEIGHT = 900, 400
SCALE = 2  # drawn at twice the size, then scaled down
MAX_DATE_LABELS = 14
MAX_TITLE = 80
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
NEW_COLOUR, RESOLVED_COLOUR, BACKLOG_COLOUR = "#4C78A8", "#54A24B", "#E45756"
TEXT_COLOUR, GRID_COLOUR = "#222222", "#dddddd"


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
    if min(*opened, *resolved, *backlog) < 0:
        raise ValueError("trend_chart draws counts, which are never negative; got a negative value")

    if len(title) > MAX_TITLE:  # one line at the title's size fits about 85 characters at 900 px
        title = title[: MAX_TITLE - 1].rstrip() + "\u2026"
    from PIL import Image, ImageDraw

    bar_peak = max(max(opened), max(resolved), 1)
    line_peak = max(max(backlog), 1)
    separate = line_peak > 2 * bar_peak
    left = _Scale.up_to(bar_peak if separate else max(bar_peak, line_peak))
    right = _Scale.up_to(line_peak) if separate else left

    image = Image.new("RGB", (WIDTH * SCALE, HEIGHT * SCALE), "white")
    draw = ImageDraw.Draw(image)
    plot = _Plot(left=_px(64), top=_px(62), right=_px(WIDTH - (64 if separate else 18)), bottom=_px(HEIGHT - 30),
                 days=len(days))
    _title_and_legend(draw, title, backlog[-1])
    _y_axis(image, draw, plot, left, "Requests per day" if separate else "Requests", TEXT_COLOUR, side="left")
    if separate:
        _y_axis(image, draw, plot, right, "Open requests", BACKLOG_COLOUR, side="right")
    _x_axis(draw, plot, days)
    _bars(draw, plot, opened, resolved, left.top)
    _backlog_line(draw, plot, backlog, right.top)

    out = io.BytesIO()
    image.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS).save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class _Plot:
    """The plot area on the canvas, in pixels of the double-size canvas, and the number of days across it."""

    left: int
    top: int
    right: int
    bottom: int
    days: int

    @property
    def slot(self) -> float:
        """The width of one day: the days share the plot's width, with 0.6 of a day's margin at each end."""
        return (self.right - self.left) / (self.days + 0.2)

    def x(self, day: float) -> float:
        """The centre of day ``day`` (0-based)."""
        return self.left + self.slot * (day + 0.6)

    def y(self, value: float, top: int) -> float:
        return self.bottom - (self.bottom - self.top) * value / top


def _px(points: float) -> int:
    """A length on the final image, in pixels of the double-size canvas."""
    return round(points * SCALE)


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=_px(size))


@dataclass(frozen=True)
class _Scale:
    """A y axis from 0 to ``top``, labelled every ``step``: whole numbers, as requests are."""

    top: int
    step: int

    @classmethod
    def up_to(cls, peak: int) -> _Scale:
        """Room for 12 % above ``peak``, in at most 6 steps of 1, 2 or 5 times a power of ten."""
        wanted = peak * 1.12
        magnitude = 1
        while True:
            for factor in (1, 2, 5):
                step = factor * magnitude
                if wanted <= step * 6:
                    return cls(top=step * math.ceil(wanted / step), step=step)
            magnitude *= 10


def _title_and_legend(draw: Any, title: str, open_now: int) -> None:
    font = _font(17)
    while draw.textlength(title, font=font) > _px(WIDTH - 30):  # wide letters: shorten it to fit
        title = title[:-2].rstrip() + "\u2026"
    draw.text((_px(10), _px(8)), title, fill=TEXT_COLOUR, font=font, stroke_width=1, stroke_fill=TEXT_COLOUR)
    font, x, y = _font(12), _px(12), _px(42)
    for label, colour, is_line in (("New", NEW_COLOUR, False), ("Resolved", RESOLVED_COLOUR, False),
                                   (f"Backlog (open: {open_now})", BACKLOG_COLOUR, True)):
        if is_line:
            draw.line((x, y, x + _px(22), y), fill=colour, width=_px(2.2))
            draw.ellipse(_around(x + _px(11), y, _px(3)), fill=colour)
            x += _px(28)
        else:
            draw.rectangle((x, y - _px(5), x + _px(14), y + _px(5)), fill=colour)
            x += _px(20)
        draw.text((x, y), label, fill=TEXT_COLOUR, font=font, anchor="lm")
        x += round(draw.textlength(label, font=font)) + _px(22)


def _y_axis(image: Any, draw: Any, plot: _Plot, scale: _Scale, label: str, colour: str, *, side: str) -> None:
    """Ticks, labels, the spine and (left only) the grid."""
    font = _font(11)
    edge = plot.left if side == "left" else plot.right
    for value in range(0, scale.top + 1, scale.step):
        y = round(plot.y(value, scale.top))
        if side == "left":
            draw.line((plot.left, y, plot.right, y), fill=GRID_COLOUR, width=_px(0.8))
            draw.text((edge - _px(6), y), _count(value, scale.top), fill=colour, font=font, anchor="rm")
        else:
            draw.text((edge + _px(6), y), _count(value, scale.top), fill=colour, font=font, anchor="lm")
        draw.line((edge - _px(3) if side == "left" else edge, y, edge if side == "left" else edge + _px(3), y),
                  fill=colour, width=_px(1))
    draw.line((edge, plot.top, edge, plot.bottom), fill=colour, width=_px(1))
    _vertical_text(image, label, colour, x=_px(8) if side == "left" else image.width - _px(8),
                   y=(plot.top + plot.bottom) // 2, side=side)


def _count(value: int, top: int) -> str:
    """A label short enough for its margin, in the unit of the axis' ``top``: 9500; 2k to 12k; 0.5M to 1.5M."""
    if top < 10_000:
        return str(value)
    if top < 1_000_000:
        return f"{value / 1000:g}k" if value else "0"
    return f"{value / 1_000_000:g}M" if value else "0"


def _vertical_text(image: Any, text: str, colour: str, *, x: int, y: int, side: str) -> None:
    """``text`` read bottom to top (left axis) or top to bottom (right), centred on ``y``, beside ``x``."""
    from PIL import Image, ImageDraw

    font = _font(11)
    width = round(ImageDraw.Draw(image).textlength(text, font=font)) + _px(4)
    mask = Image.new("L", (width, _px(16)), 0)
    ImageDraw.Draw(mask).text((_px(2), _px(8)), text, fill=255, font=font, anchor="lm")
    mask = mask.rotate(90 if side == "left" else -90, expand=True)
    left = x if side == "left" else x - mask.width
    image.paste(colour, (left, y - mask.height // 2), mask)


def _x_axis(draw: Any, plot: _Plot, days: Sequence[date]) -> None:
    """The bottom spine and the date labels: every ``step``-th day, always the last."""
    draw.line((plot.left, plot.bottom, plot.right, plot.bottom), fill=TEXT_COLOUR, width=_px(1))
    font, step = _font(11), math.ceil(len(days) / MAX_DATE_LABELS)
    for i in range(len(days) - 1, -1, -step):
        draw.text((round(plot.x(i)), plot.bottom + _px(6)), short_date(days[i]), fill=TEXT_COLOUR, font=font,
                  anchor="mt")


def _bars(draw: Any, plot: _Plot, opened: Sequence[int], resolved: Sequence[int], top: int) -> None:
    """Two bars a day side by side, filling 0.8 of its slot; a zero draws nothing."""
    width = plot.slot * 0.4
    for i, (new, done) in enumerate(zip(opened, resolved)):
        centre = plot.x(i)
        for value, colour, left in ((new, NEW_COLOUR, centre - width), (done, RESOLVED_COLOUR, centre)):
            if value:
                draw.rectangle((round(left), round(plot.y(value, top)), round(left + width) - 1, plot.bottom - 1),
                               fill=colour)


def _backlog_line(draw: Any, plot: _Plot, backlog: Sequence[int], top: int) -> None:
    points = [(plot.x(i), plot.y(value, top)) for i, value in enumerate(backlog)]
    if len(points) > 1:
        draw.line(points, fill=BACKLOG_COLOUR, width=_px(2.2), joint="curve")
    for x, y in points:
        draw.ellipse(_around(x, y, _px(3)), fill=BACKLOG_COLOUR)


def _around(x: float, y: float, radius: int) -> tuple[float, float, float, float]:
    return (x - radius, y - radius, x + radius, y + radius)
