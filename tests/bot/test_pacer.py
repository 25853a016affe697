"""The per-channel pacer of Slack delivery: a token bucket that slows down when Slack says 429."""

from __future__ import annotations

import asyncio
import time

from bot.delivery import ChannelPacer


def test_a_429_makes_the_channel_wait_and_go_slower_then_it_recovers() -> None:
    async def scenario() -> None:
        pacer = ChannelPacer(rate=100.0, burst=2)
        await pacer.wait("C1")
        pacer.rate_limited(0.2)  # the last call's channel: C1
        assert pacer.rate_of("C1") == 50.0 and pacer.rate_of("C2") == 100.0
        started = time.monotonic()
        await pacer.wait("C1")
        assert time.monotonic() - started >= 0.19  # Retry-After waited out before the next call
        await pacer.wait("C2")  # another channel is not held up
        for _ in range(40):
            await pacer.wait("C1")
        assert pacer.rate_of("C1") == 100.0  # back to the configured rate, never above it

    asyncio.run(scenario())


def test_the_rate_never_falls_below_the_floor() -> None:
    pacer = ChannelPacer(rate=1.0)
    for _ in range(10):
        pacer.rate_limited(1, channel="C1")
    assert pacer.rate_of("C1") == ChannelPacer.FLOOR
