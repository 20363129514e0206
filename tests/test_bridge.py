import asyncio

import greenasync


async def test_trivial_call_returns_result():
    assert await greenasync.run(lambda a, b=0: a + b, 1, b=2) == 3
