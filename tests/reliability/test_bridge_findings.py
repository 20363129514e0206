"""Bridge bugs found by the reliability work, fixed: their reproductions stay as regression
tests."""

import asyncio
import time

import pytest

import greenasync
from greenasync import _bridge


async def test_a_wait_whose_fd_cannot_join_the_epoll_set_leaves_no_registration():
    hub = _bridge._hub_for(asyncio.get_running_loop())
    outcomes = []
    with open(__file__, "rb") as regular_file:
        for _ in range(2):
            try:
                outcomes.append(await asyncio.wait_for(
                    greenasync.run(greenasync.wait_readable, regular_file, 0.05), 2))
            except Exception as exc:  # the outcome is what the test reports
                outcomes.append(type(exc).__name__)
        stale = regular_file.fileno() in hub.readers
    assert "ConcurrentUseError" not in outcomes and not stale, \
        f"outcomes of two waits: {outcomes}; fd still in hub.readers: {stale}"


def busy_then_park():
    end = time.perf_counter() + 0.0002  # 0.2 ms of library code before the first park
    while time.perf_counter() < end:
        pass
    greenasync.sleep(0.001)


def test_many_calls_started_at_once_cost_linear_loop_callbacks():
    # Fixed in 89953af. Before it, each call past the time slice spun in run()'s
    # `while hub.over_slice(): await asyncio.sleep(0)` (and deferred resumptions re-queued
    # themselves) once per loop iteration until its turn: O(N^2) callbacks (500 calls 15k,
    # 1,000 70k, 2,000 280k, 4,000 1.1M; 10,000 redis-py connects took 128 s to park).
    n = 1500
    loop = asyncio.new_event_loop()
    callbacks = [0]
    run_once = loop._run_once

    def counting_run_once():
        callbacks[0] += len(loop._ready)
        run_once()

    loop._run_once = counting_run_once

    async def main():
        await asyncio.gather(*[greenasync.run(busy_then_park) for _ in range(n)])

    start = time.monotonic()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    elapsed = time.monotonic() - start
    # Each call needs a handful of callbacks (start, park, timer, resume, task wake-ups).
    assert callbacks[0] < 40 * n, \
        f"{n} calls: {callbacks[0]} loop callbacks ({callbacks[0] / n:.0f} per call), " \
        f"{elapsed:.2f} s for {n * 0.0002:.2f} s of work"


async def test_a_nan_timeout_does_not_stop_other_waits_from_timing_out():
    import math

    bad = asyncio.ensure_future(greenasync.run(lambda: greenasync.Waiter().wait(math.nan)))
    await asyncio.sleep(0.01)
    start = time.monotonic()
    try:
        await asyncio.wait_for(greenasync.run(greenasync.sleep, 0.05), 1)
        outcome = f"sleep(0.05) took {time.monotonic() - start:.3f} s"
    except asyncio.TimeoutError:
        outcome = "sleep(0.05) was still asleep after 1 s"
    finally:
        bad.cancel()
        [bad_outcome] = await asyncio.gather(bad, return_exceptions=True)
    assert outcome.startswith("sleep(0.05) took"), outcome
    # As time.sleep and threading do: NaN is refused at once.
    assert isinstance(bad_outcome, ValueError) and "NaN" in str(bad_outcome), repr(bad_outcome)
