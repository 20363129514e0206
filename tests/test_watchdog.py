"""The blocking watchdog, statistics() and the pytest plugin, with real blocking calls.

Every async test runs on asyncio, uvloop and Tornado (see conftest.py). Stalls are 300 ms
against a 100 ms threshold (or 500 ms against 100 ms where a second phase is needed), so a
loaded 2-core machine cannot blur the line: a stall is reported as a lower bound within one
sampling interval (20 ms here) of its length.
"""

import asyncio
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import greenlet
import pytest

import greenasync
from greenasync import _bridge, _patch
from greenasync._watchdog import Stall, Watchdog, statistics, watchdog
from greenasync.green import threading as gthreading

THRESHOLD = 0.1
STALL = 0.3


class Collect(list):
    """A watchdog callback that keeps every Stall (callbacks run in the watchdog's thread)."""

    def __call__(self, stall):
        self.append(stall)

    def final(self):
        return [s for s in self if not s.ongoing]


async def settle(seconds=0.1):
    """Let the loop run a few heartbeats, so the stall that just ended is closed."""
    await asyncio.sleep(seconds)


def innermost(stall):
    return stall.frames[-1]


# --- the watchdog --------------------------------------------------------------------------


async def test_blocking_sleep_in_a_coroutine_is_reported_once_with_its_stack():
    got = Collect()
    with watchdog(THRESHOLD, callback=got) as dog:
        await settle(0.05)
        time.sleep(STALL)  # the stall under test
        await settle(0.2)  # ten more heartbeats: the one stall must not be reported twice
    assert len(got) == 1, got
    stall = got[0]
    assert isinstance(stall, Stall) and not stall.ongoing and not stall.idle
    assert STALL - 0.05 <= stall.duration <= STALL + 0.2, stall.duration
    assert not stall.in_worker and stall.job is None
    assert stall.samples >= 3  # sampled repeatedly while it lasted
    frame = innermost(stall)
    assert frame.filename == __file__ and frame.function.endswith(
        "test_blocking_sleep_in_a_coroutine_is_reported_once_with_its_stack")
    assert frame.line == "time.sleep(STALL)  # the stall under test"
    assert "time.sleep(STALL)  # the stall under test" in stall.stack
    assert stall.cause.startswith(f"time.sleep in {__name__}: a blocking call on the event "
                                  "loop thread, outside greenasync.run()"), stall.cause
    assert stall.cpu is not None and stall.cpu < 0.5  # asleep, not computing
    assert dog.stalls == 1 and dog.longest == stall.duration
    assert stall.loop is asyncio.get_running_loop()


def _poll_once(sock, ms):
    poller = select.poll()  # the stdlib: this module is not patched
    poller.register(sock, select.POLLIN)
    return poller.poll(ms)  # blocks the loop thread: nothing is ever readable


async def test_unpatched_poll_in_a_job_is_reported_with_select_poll_as_the_cause():
    a, b = socket.socketpair()
    got = Collect()
    with a, b, watchdog(THRESHOLD, callback=got):
        await settle(0.05)
        assert await greenasync.run(_poll_once, a, int(STALL * 1000)) == []
        await settle()
    assert len(got) == 1, got
    stall = got[0]
    assert stall.in_worker and stall.job == f"{__name__}._poll_once"
    assert stall.cause.startswith(
        f"select.poll in {__name__}: not patched; add patch=['{__name__}']"), stall.cause
    assert innermost(stall).line == "return poller.poll(ms)  # blocks the loop thread: " \
                                    "nothing is ever readable"
    assert innermost(stall).greenlet == "worker"
    # Above the worker's frames: the loop side, down to the await that started the job.
    loop_side = [f for f in stall.frames if f.greenlet == "loop"]
    assert any("await greenasync.run(_poll_once" in f.line for f in loop_side), stall.stack
    assert "switched into a greenasync worker greenlet (job: " in stall.stack


@pytest.fixture
def redis_unpatched():
    """redis unpatched for the test; whatever other tests patched is restored after."""
    was = "redis" in _patch.patched()
    _patch.unpatch("redis")
    yield
    if was:
        _patch.patch("redis")
    else:
        _patch.unpatch("redis")


async def test_redis_hiredis_poll_is_named_and_patching_redis_removes_the_stall(redis_unpatched):
    from redis._parsers import hiredis  # redis-py's own readiness check: select.poll

    a, b = socket.socketpair()
    with a, b:
        got = Collect()
        with watchdog(THRESHOLD, callback=got):
            await settle(0.05)
            assert await greenasync.run(hiredis._socket_can_read, a, STALL) is False
            await settle()
        assert len(got) == 1, got
        stall = got[0]
        assert stall.cause.startswith(
            "select.poll in redis._parsers.hiredis: not patched; add patch=['redis']"), stall.cause
        assert innermost(stall).module == "redis._parsers.hiredis"
        assert innermost(stall).patched is None
        # Following the advice removes the stall: the same call now parks.
        _patch.patch("redis")
        got = Collect()
        with watchdog(THRESHOLD, callback=got) as dog:
            await settle(0.05)
            start = time.monotonic()
            assert await greenasync.run(hiredis._socket_can_read, a, STALL) is False
            assert time.monotonic() - start >= STALL - 0.01  # it did wait, cooperatively
            await settle()
        assert got == [] and dog.beats >= 10


async def test_cooperative_sleep_is_not_reported(ticker):
    got = Collect()
    async with ticker() as tick:
        with watchdog(THRESHOLD, callback=got) as dog:
            await greenasync.run(greenasync.sleep, STALL)  # parks: the loop runs meanwhile
            await asyncio.sleep(0.05)
    assert got == []
    assert dog.beats >= 10  # it was watching: the heartbeat ran all along
    assert tick.max_gap < THRESHOLD  # and the loop was indeed never stalled


async def test_threshold_is_respected():
    low, high = Collect(), Collect()
    with watchdog(THRESHOLD, callback=low), watchdog(0.5, callback=high):
        await settle(0.05)
        time.sleep(0.03)  # well under both thresholds
        await settle()
        time.sleep(STALL)  # over the low threshold, under the high one
        await settle()
    assert len(low) == 1 and low[0].threshold == THRESHOLD, low
    assert low[0].duration >= STALL - 0.05
    assert high == []


async def test_stop_stops_reporting():
    got = Collect()
    dog = watchdog(THRESHOLD, callback=got)
    await settle(0.05)
    time.sleep(STALL)
    await settle()
    assert len(got) == 1 and dog.running
    dog.stop()
    dog.stop()  # idempotent
    assert not dog.running and not dog._thread.is_alive()
    beats = dog.beats
    time.sleep(STALL)
    await settle(0.2)
    assert len(got) == 1  # nothing more reported
    assert dog.beats == beats  # and the heartbeat is gone from the loop


async def test_stop_on_the_loop_thread_reports_the_stall_it_ends():
    # `with watchdog(): <blocking>` with no loop iteration before the exit: stop() itself
    # closes the stall, and the report is delivered before stop() returns.
    got = Collect()
    with watchdog(THRESHOLD, callback=got):
        time.sleep(STALL)
    assert len(got) == 1 and got[0].duration >= STALL - 0.05
    assert "time.sleep(STALL)" in innermost(got[0]).line


async def test_default_report_is_a_warning_on_the_greenasync_watchdog_logger(caplog):
    caplog.set_level("WARNING", logger="greenasync.watchdog")
    with watchdog(THRESHOLD):
        await settle(0.05)
        time.sleep(STALL)  # logged
        await settle()
    records = [r for r in caplog.records if r.name == "greenasync.watchdog"]
    assert len(records) == 1 and records[0].levelname == "WARNING"
    stall = records[0].greenasync_stall
    message = records[0].getMessage()
    assert message.startswith("event loop stalled for ")
    assert stall.cause in message and "time.sleep(STALL)  # logged" in message


def _spin(seconds):
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


async def test_cpu_bound_code_is_named_as_such():
    got = Collect()
    with watchdog(THRESHOLD, callback=got):
        await settle(0.05)
        await greenasync.run(_spin, STALL)
        await settle()
    assert len(got) == 1, got
    stall = got[0]
    assert innermost(stall).function == "_spin"
    assert "no known blocking call" in stall.cause or "ran without yielding" in stall.cause
    assert "not patched" not in stall.cause



def test_a_sample_inside_a_shim_socket_syscall_is_not_called_blocking():
    # Seen on a machine with load average 4: the sampler caught pymongo's recv_into inside
    # the shim's (non-blocking) C call, and the cause said "on a blocking stdlib socket".
    from greenasync._watchdog import _Analysis, _cause

    def cause(entry, primitive):
        analysis = _Analysis(primitive=primitive, entry=entry, module="pymongo.network_layer",
                             function="receive_data", lineno=331, plumbing=False,
                             patched="pymongo")
        return _cause(analysis, in_worker=True, cpu=0.3, idle=False)

    shim = cause("greenasync.green.socket._cooperative.<locals>.method", "socket.socket.recv_into")
    assert "blocking stdlib" not in shim and "blocked in" not in shim, shim
    assert "no known blocking call" in shim, shim
    # The same C call reached without the shim is the stdlib blocking: still named so.
    stdlib = cause("socket.socket.recv_into", "socket.socket.recv_into")
    assert "reached the blocking stdlib" in stdlib, stdlib

async def test_a_call_holding_the_gil_is_still_reported_with_its_line():
    # Size a C call that holds the GIL to ~0.5 s at the fastest speed measured (a loaded
    # machine only makes it longer).
    n = 1_000_000
    fastest = min(_timed(sum, range(n)) for _ in range(5))
    n = int(n * 0.5 / max(fastest, 1e-4))
    got = Collect()
    with watchdog(THRESHOLD, callback=got):
        await settle(0.05)
        start = time.perf_counter()
        sum(range(n))  # no other thread runs meanwhile
        held = time.perf_counter() - start
        await settle()
    assert held > 0.3, held
    assert len(got) == 1, (held, got)
    stall = got[0]
    assert stall.duration >= held - 0.05
    # The sampler got the GIL only when sum() returned, still on that line.
    assert innermost(stall).line == "sum(range(n))  # no other thread runs meanwhile"
    assert stall.cause.startswith("sum in "), stall.cause
    assert "held the GIL" in stall.cause


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


async def test_a_long_stall_is_reported_while_it_lasts_then_when_it_ends():
    got = []
    ended = []
    with watchdog(THRESHOLD, ongoing_after=0.25,
                  callback=lambda s: got.append((time.monotonic(), s))):
        await settle(0.05)
        time.sleep(0.6)
        ended.append(time.monotonic())
        await settle()
    assert [s.ongoing for _, s in got] == [True, False], got
    (when, interim), (_, final) = got
    assert when < ended[0]  # delivered while the loop was still stalled
    assert 0.25 <= interim.duration < 0.6 and final.duration >= 0.5
    assert "so far (still stalled)" in str(interim)
    assert interim.cause.split(";")[0] == final.cause.split(";")[0]  # same call, cpu aside


@pytest.fixture
def sample_package(tmp_path, monkeypatch):
    """A patched package whose one blocking call patch() cannot rebind."""
    pkg = tmp_path / "wd_sample_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""\
        import time


        def nap(seconds):
            import time as local_time  # an import in a function body: patch() cannot reach it
            local_time.sleep(seconds)


        def patched_nap(seconds):
            time.sleep(seconds)  # a module global: rebound to the shim
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import wd_sample_pkg

    _patch.patch("wd_sample_pkg")
    yield wd_sample_pkg
    _patch.unpatch("wd_sample_pkg")
    sys.modules.pop("wd_sample_pkg", None)


async def test_a_stall_in_a_patched_package_names_the_reference_patch_missed(sample_package):
    got = Collect()
    with watchdog(THRESHOLD, callback=got):
        await settle(0.05)
        await greenasync.run(sample_package.patched_nap, STALL)  # cooperative: no stall
        await settle(0.05)
        await greenasync.run(sample_package.nap, STALL)
        await settle()
    assert len(got) == 1, got
    stall = got[0]
    assert stall.cause.startswith(
        "time.sleep in wd_sample_pkg: 'wd_sample_pkg' is patched, but this call still reached "
        "the blocking stdlib"), stall.cause
    assert "patched()['wd_sample_pkg'].unreached" in stall.cause
    frame = innermost(stall)
    assert frame.function == "nap" and frame.patched == "wd_sample_pkg"
    assert "[patched: wd_sample_pkg]" in stall.stack


def test_watchdog_of_a_loop_running_in_another_thread():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        got = Collect()
        dog = watchdog(THRESHOLD, loop=loop, callback=got)
        deadline = time.monotonic() + 5
        while dog.beats < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dog.beats >= 3

        def block():
            time.sleep(STALL)  # on the other loop's thread

        loop.call_soon_threadsafe(block)
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        dog.stop()  # from a thread that is not the loop's
        assert len(got) == 1 and innermost(got[0]).function.endswith("block")
        assert got[0].cause.startswith(f"time.sleep in {__name__}")
        assert not dog.running
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_a_stopped_loop_is_not_a_stall_and_a_closed_loop_ends_the_watchdog():
    loop = asyncio.new_event_loop()
    got = Collect()

    async def start():
        return watchdog(THRESHOLD, callback=got)

    try:
        dog = loop.run_until_complete(start())
        loop.run_until_complete(asyncio.sleep(0.1))
        time.sleep(STALL)  # the loop is not running: its timers are not due to anybody
        loop.run_until_complete(asyncio.sleep(0.1))
        assert got == [] and dog.beats >= 5
    finally:
        loop.close()
    dog._thread.join(timeout=2)
    assert not dog._thread.is_alive() and not dog.running
    assert got == []


def test_bad_arguments():
    with pytest.raises(greenasync.NoRunningLoopError, match="needs a running event loop"):
        watchdog(THRESHOLD)
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="threshold must be > 0"):
            Watchdog(loop, 0)
        with pytest.raises(ValueError, match="interval must be in"):
            Watchdog(loop, 0.1, interval=0.2)
        with pytest.raises(TypeError, match="callback must be callable"):
            Watchdog(loop, 0.1, callback="log")
    finally:
        loop.close()


# --- statistics -----------------------------------------------------------------------------


KINDS = ("read", "write", "sleep", "lock", "thread", "await", "yield")


def kinds(**counts):
    return {k: counts.get(k, 0) for k in KINDS}


async def test_statistics_totals_for_a_known_workload():
    assert statistics().calls == 0  # a fresh loop
    # greenlet's own tracer counts the switches into workers independently of greenasync.
    into_workers = []

    hub = _bridge._hub_for(asyncio.get_running_loop())

    def trace(event, args):
        # Only this loop's workers: idle workers of earlier, closed loops are ended (thrown
        # into) from this loop too.
        target = args[1]
        if event in ("switch", "throw") and type(target) is _bridge._Worker and target.hub is hub:
            into_workers.append(event)

    previous = greenlet.settrace(trace)
    try:
        for _ in range(20):
            await greenasync.run(lambda: None)
        for _ in range(5):
            await greenasync.run(greenasync.sleep, 0.001)
        tasks = [asyncio.ensure_future(greenasync.run(greenasync.sleep, 10)) for _ in range(3)]
        await asyncio.sleep(0.02)
        assert statistics().parked == kinds(sleep=3)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        greenlet.settrace(previous)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    stats = statistics()
    assert stats.switches == len(into_workers)
    assert stats.loops == 1
    assert stats.calls == 28
    assert stats.parks == 8 and stats.parks_by_kind == kinds(sleep=8)
    assert stats.cancellations == 3
    assert stats.switches == 28 + 8
    assert stats.parked == kinds()
    # One worker served the sequential calls; the three concurrent ones needed three.
    assert stats.spawned == 3 and stats.workers == 3
    assert stats.idle_workers == 3 and stats.busy_workers == 0
    assert stats.stalls == 0 and stats.longest_stall == 0.0


async def test_statistics_count_parked_waits_by_kind_while_they_are_parked():
    loop = asyncio.get_running_loop()
    pairs = [socket.socketpair() for _ in range(4)]
    full, peer = pairs[3]
    full.setblocking(False)
    try:
        while True:
            full.send(b"x" * 65536)
    except BlockingIOError:
        pass  # `full` is not writable until `peer` reads
    event = gthreading.Event()
    thread_gate = threading.Event()
    future = loop.create_future()
    jobs = [greenasync.run(greenasync.wait_readable, a) for a, _ in pairs[:3]]
    jobs += [greenasync.run(greenasync.wait_writable, full)]
    jobs += [greenasync.run(greenasync.sleep, 0.3) for _ in range(2)]
    jobs += [greenasync.run(event.wait)]
    jobs += [greenasync.run(greenasync.to_thread, thread_gate.wait)]
    jobs += [greenasync.run(greenasync.await_, future)]
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        await asyncio.sleep(0.05)
        stats = statistics()
        assert stats.parked == kinds(read=3, write=1, sleep=2, lock=1, thread=1, **{"await": 1})
        assert stats.busy_workers == 9 and stats.workers == 9 and stats.idle_workers == 0
        # From another thread, for this loop, it reads the same.
        other = []
        reader = threading.Thread(target=lambda: other.append(statistics(loop)))
        reader.start()
        reader.join()
        assert other[0].parked == stats.parked
        # Wake every one of them.
        for _, b in pairs[:3]:
            b.send(b"!")
        peer.setblocking(False)
        for _ in range(100):  # drain until `full` is writable again and its waiter woke
            try:
                while peer.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
            await asyncio.sleep(0.01)
            if statistics().parked["write"] == 0:
                break
        event.set()
        thread_gate.set()
        future.set_result("done")
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    finally:
        for task in tasks:
            task.cancel()
        for a, b in pairs:
            a.close()
            b.close()
    stats = statistics()
    assert stats.parked == kinds()
    assert stats.busy_workers == 0 and stats.idle_workers == 9
    assert stats.parks_by_kind["read"] == 3 and stats.parks_by_kind["write"] == 1
    assert stats.parks_by_kind["sleep"] == 2 and stats.parks_by_kind["thread"] == 1
    assert stats.parks_by_kind["await"] == 1 and stats.parks_by_kind["lock"] >= 1
    assert stats.calls == 9


async def test_statistics_longest_stall_comes_from_the_watchdog():
    with watchdog(THRESHOLD, callback=Collect()) as dog:
        await settle(0.05)
        time.sleep(STALL)
        await settle()
    stats = statistics()
    assert stats.stalls == 1 and stats.longest_stall == dog.longest >= STALL - 0.05
    assert stats.as_dict()["longest_stall"] == stats.longest_stall


def test_statistics_without_a_running_loop_sum_every_loop(loop_kind):
    from conftest import run_on

    async def work():
        for _ in range(7):
            await greenasync.run(greenasync.sleep, 0)
        return asyncio.get_running_loop()

    loop = run_on(loop_kind, work)
    mine = statistics(loop)
    assert mine.calls == 7 and mine.parks_by_kind == kinds(sleep=7) and mine.loops == 1
    everything = statistics()
    assert everything.loops >= 1 and everything.calls >= 7
    assert set(everything.as_dict()) == {
        "loops", "workers", "idle_workers", "busy_workers", "parked", "calls", "parks",
        "parks_by_kind", "switches", "cancellations", "spawned", "stalls", "longest_stall"}
    assert set(everything.as_dict()["parked"]) == set(KINDS)


# --- the pytest plugin -------------------------------------------------------------------


PLUGIN_TESTS = '''
import asyncio
import time

import pytest

import greenasync

pytestmark = pytest.mark.no_loop_stall


async def test_stalls():
    await asyncio.sleep(0.01)
    time.sleep(0.3)  # STALL-LINE


async def test_clean():
    await asyncio.sleep(0.05)
    await greenasync.run(greenasync.sleep, 0.2)


@pytest.mark.no_loop_stall(threshold=0.5)
async def test_under_a_higher_threshold():
    time.sleep(0.3)


async def test_fails_anyway():
    time.sleep(0.3)
    assert False, "the test's own failure"
'''

PLUGIN_FIXTURE_TESTS = '''
import asyncio
import time


async def test_fixture_stall(no_loop_stall):
    assert no_loop_stall.threshold == 0.1
    time.sleep(0.3)  # FIXTURE-STALL


def test_sync_test_watching_its_own_loop(no_loop_stall):
    async def main():
        with no_loop_stall.watch():
            await asyncio.sleep(0.02)
            time.sleep(0.3)  # SYNC-STALL
            await asyncio.sleep(0.05)

    asyncio.run(main())


async def test_not_opted_in():
    time.sleep(0.3)
'''


def test_pytest_plugin_fails_a_stalling_test_and_passes_a_clean_one(tmp_path):
    here = Path(__file__).parent
    (tmp_path / "conftest.py").write_text((here / "conftest.py").read_text())  # 3 loop kinds
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\naddopts = -p no:cacheprovider\nfilterwarnings = error\ntimeout = 60\n")
    (tmp_path / "test_marked.py").write_text(PLUGIN_TESTS)
    (tmp_path / "test_fixture.py").write_text(PLUGIN_FIXTURE_TESTS)
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "greenasync.pytest_plugin", "-q",
         f"--junitxml={report}", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert report.exists(), proc.stdout + proc.stderr
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        failure = case.find("failure")
        outcomes[case.get("name")] = "passed" if failure is None else failure.get("message", "") \
            + (failure.text or "")
    expect_pass = [f"test_clean[{k}]" for k in ("asyncio", "uvloop", "tornado")]
    expect_pass += [f"test_under_a_higher_threshold[{k}]" for k in ("asyncio", "uvloop", "tornado")]
    expect_pass += [f"test_not_opted_in[{k}]" for k in ("asyncio", "uvloop", "tornado")]
    for name in expect_pass:
        assert outcomes.get(name) == "passed", (name, outcomes.get(name), proc.stdout)
    for kind in ("asyncio", "uvloop", "tornado"):
        text = outcomes[f"test_stalls[{kind}]"]
        assert "greenasync no_loop_stall: the event loop stalled once for longer than 0.1 s" in text
        assert "time.sleep(0.3)  # STALL-LINE" in text and "test_marked.py" in text
        assert "time.sleep in test_marked: a blocking call on the event loop thread" in text
        text = outcomes[f"test_fails_anyway[{kind}]"]
        assert "the test's own failure" in text  # the test's failure stays the failure
        text = outcomes[f"test_fixture_stall[{kind}]"]
        assert "time.sleep(0.3)  # FIXTURE-STALL" in text
    assert "time.sleep(0.3)  # SYNC-STALL" in outcomes["test_sync_test_watching_its_own_loop"]
    assert len(outcomes) == 4 * 3 + 3 + 1 + 3, sorted(outcomes)
    assert proc.returncode == 1
