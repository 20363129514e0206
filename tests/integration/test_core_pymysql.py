"""PyMySQL (unchanged, scoped-patched) driven by greenasync.run against a real MariaDB."""

import asyncio
import time

import pymysql
import pytest

import greenasync
from greenasync.green import queue as green_queue


@pytest.fixture(scope="module", autouse=True)
def patched_pymysql():
    greenasync.patch("pymysql")
    yield
    greenasync.unpatch("pymysql")


def connect(params):
    # ssl_disabled: PyMySQL's default "preferred" TLS builds an SSLContext per connection,
    # ~50 ms of CPU on the loop thread each; that is CPU, not waiting, and no shim can help.
    return pymysql.connect(**params, ssl_disabled=True, connect_timeout=5)


async def test_concurrent_queries_park_and_never_stall_the_loop(mysql_params, ticker):
    pool = green_queue.Queue()
    connections = await asyncio.gather(*[greenasync.run(connect, mysql_params) for _ in range(20)])
    for conn in connections:
        pool.put(conn)

    def query(i):
        conn = pool.get()  # parks while all 20 connections are busy
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT SLEEP(0.05), %s", (i,))
                return cursor.fetchone()[1]
        finally:
            pool.put(conn)

    async with ticker() as t:
        start = time.monotonic()
        results = await asyncio.gather(*[greenasync.run(query, i) for i in range(200)])
        elapsed = time.monotonic() - start
    assert results == list(range(200))
    # 200 queries of 50 ms over 20 connections: ~0.5 s if they overlap, 10 s if serialized.
    assert elapsed < 3, f"{elapsed:.2f} s"
    assert t.max_gap < 0.05, f"loop stalled {t.max_gap * 1000:.1f} ms"
    for conn in connections:
        conn.close()


async def test_server_error_passes_through_unchanged(mysql_params):
    conn = await greenasync.run(connect, mysql_params)

    def bad_sql():
        with conn.cursor() as cursor:
            cursor.execute("SELECT * FROM greenasync_no_such_table")

    with pytest.raises(pymysql.err.ProgrammingError) as info:
        await greenasync.run(bad_sql)
    assert info.value.args[0] == 1146  # ER_NO_SUCH_TABLE
    conn.close()


async def test_read_timeout_raises_pymysql_error_at_the_deadline(mysql_params, ticker):
    conn = await greenasync.run(
        lambda: pymysql.connect(**mysql_params, ssl_disabled=True, read_timeout=0.3)
    )

    def slow():
        with conn.cursor() as cursor:
            cursor.execute("SELECT SLEEP(3)")

    async with ticker() as t:
        start = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError):
            await greenasync.run(slow)
        elapsed = time.monotonic() - start
    assert 0.25 < elapsed < 2, elapsed
    assert t.max_gap < 0.05
    conn.close()
