"""Waiting that a shutdown cuts short."""

from __future__ import annotations

import asyncio


async def pause(seconds: float, until: asyncio.Event) -> None:
    """Sleep `seconds`, or less if `until` is set meanwhile."""
    try:
        await asyncio.wait_for(until.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
