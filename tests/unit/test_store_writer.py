"""One writer at a time (`acquire_writer`), on both adapters: a second waits or times out, and takes over
once the first lets go."""

from __future__ import annotations

import asyncio

import pytest

from replay.store import StoreBusy, StoreError, open_store
from tests.stores import KINDS, location_for


@pytest.fixture(params=KINDS)
def location(request, tmp_path) -> str:
    return location_for(request.param, request, tmp_path)


async def test_a_second_writer_waits_until_the_first_closes(location):
    async with open_store(location) as second:
        first = await open_store(location)
        try:
            await first.acquire_writer(timeout=5)
            with pytest.raises(StoreBusy) as busy:
                await second.acquire_writer(timeout=0.3)
            assert isinstance(busy.value, StoreError)
            waiting = asyncio.create_task(second.acquire_writer())
            await asyncio.sleep(0.5)
            assert not waiting.done(), "the second writer did not wait"
        finally:
            await first.close()
        await asyncio.wait_for(waiting, timeout=10)   # the first let go: the second is the writer now
        async with open_store(location) as third:
            with pytest.raises(StoreBusy):
                await third.acquire_writer(timeout=0.3)
