"""The digest's trend chart: a well-formed PNG of the promised size, the same bytes for the same input."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import pytest

from notifications.chart import short_date, trend_chart

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DAYS = [date(2025, 11, 10) + timedelta(days=i) for i in range(14)]
OPENED = [5, 8, 3, 0, 0, 7, 9, 6, 4, 11, 2, 0, 1, 6]
RESOLVED = [4, 6, 5, 1, 0, 3, 8, 9, 7, 6, 5, 1, 0, 4]
BACKLOG = [41, 43, 41, 40, 40, 44, 45, 42, 39, 44, 41, 40, 41, 43]


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, data) chunks of ``png``, each checked for its length and CRC."""
    assert png[:8] == PNG_SIGNATURE
    found, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        assert len(data) == length, f"chunk {kind!r} is cut short"
        assert crc == zlib.crc32(kind + data), f"chunk {kind!r} has a bad CRC"
        found.append((kind, data))
        pos += 12 + length
    return found


def decoded_size(png: bytes) -> tuple[int, int]:
    """Width and height from IHDR, after checking the image data inflates to exactly that many rows."""
    parts = chunks(png)
    assert parts[0][0] == b"IHDR" and parts[-1] == (b"IEND", b"")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", parts[0][1])
    channels = {2: 3, 6: 4}[colour]  # RGB or RGBA
    assert (depth, interlace) == (8, 0)
    raw = zlib.decompress(b"".join(data for kind, data in parts if kind == b"IDAT"))
    assert len(raw) == height * (1 + width * channels)  # one filter byte per row
    return width, height


def chart(**overrides: object) -> bytes:
    args = dict(days=DAYS, opened=OPENED, resolved=RESOLVED, backlog=BACKLOG, title="Support requests, last 14 days")
    args.update(overrides)
    return trend_chart(**args)  # type: ignore[arg-type]


def test_it_is_a_well_formed_png_of_900_by_400() -> None:
    png = chart()

    assert decoded_size(png) == (900, 400)
    assert 5_000 < len(png) < 200_000


@pytest.mark.parametrize(
    "series",
    [
        pytest.param(dict(backlog=[b // 4 for b in BACKLOG]), id="backlog-on-the-same-axis"),
        pytest.param(dict(opened=[0] * 14, resolved=[0] * 14, backlog=[0] * 14), id="a-quiet-fortnight"),
        pytest.param(dict(days=DAYS[:1], opened=[3], resolved=[0], backlog=[3]), id="one-day"),
        pytest.param(dict(days=[DAYS[0] + timedelta(days=i) for i in range(90)], opened=[i % 7 for i in range(90)],
                          resolved=[i % 5 for i in range(90)], backlog=list(range(100, 190))), id="ninety-days"),
    ],
)
def test_other_shapes_of_data_render_at_the_same_size(series: dict[str, object]) -> None:
    assert decoded_size(chart(**series)) == (900, 400)


def test_the_same_input_gives_the_same_bytes_with_no_text_or_time_chunks() -> None:
    first, second = chart(), chart()

    assert first == second
    assert {kind for kind, _ in chunks(first)} <= {b"IHDR", b"pHYs", b"IDAT", b"IEND"}


def test_the_title_is_part_of_the_picture() -> None:
    assert chart(title="Acme: last 14 days") != chart()


def test_a_worker_thread_draws_the_same_bytes() -> None:
    expected = chart()
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: chart(), range(3)))

    assert results == [expected] * 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(opened=OPENED[:-1]), "days=14, opened=13, resolved=14, backlog=14"),
        (dict(backlog=BACKLOG + [1]), "backlog=15"),
        (dict(days=[], opened=[], resolved=[], backlog=[]), "at least one day"),
        (dict(resolved=[-1] + RESOLVED[1:]), "never negative"),
    ],
)
def test_bad_input_is_a_value_error_that_says_what_is_wrong(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chart(**overrides)


def test_dates_are_short_and_do_not_follow_the_locale() -> None:
    assert [short_date(date(2025, 11, 23)), short_date(date(2026, 1, 5))] == ["Nov 23", "Jan 5"]


def test_pillow_is_imported_only_to_draw() -> None:
    code = (
        "import sys, datetime\n"
        "from notifications.chart import trend_chart\n"
        "assert 'PIL' not in sys.modules, 'imported with the module'\n"
        "trend_chart([datetime.date(2025, 1, 1)], [1], [0], [1], title='t')\n"
        "assert 'PIL.ImageDraw' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr


def test_a_title_too_wide_for_the_picture_is_cut_short_not_drawn_off_its_edge() -> None:
    from PIL import Image

    widest = Image.open(io.BytesIO(chart(title="W" * 79))).convert("RGB")
    title_band_right_edge = widest.crop((885, 0, 900, 36))

    assert title_band_right_edge.getcolors() == [(15 * 36, (255, 255, 255))]  # white: nothing drawn there
    assert widest.crop((0, 0, 440, 36)).getcolors(maxcolors=10_000) != [(440 * 36, (255, 255, 255))]


@pytest.mark.parametrize("scale", [1_000_000, 100_000_000], ids=["millions", "hundreds-of-millions"])
def test_large_counts_are_labelled_short_enough_to_stay_inside_the_picture(scale: int) -> None:
    from PIL import Image

    picture = Image.open(io.BytesIO(chart(opened=[n * scale for n in OPENED], resolved=[n * scale for n in RESOLVED],
                                          backlog=[n * scale * 10 for n in BACKLOG]))).convert("RGB")
    white = [(4 * 330, (255, 255, 255))]

    assert picture.crop((0, 50, 4, 380)).getcolors() == white  # the left edge, beside the left axis' labels
    assert picture.crop((896, 50, 900, 380)).getcolors() == white  # the right edge, beside the backlog's
