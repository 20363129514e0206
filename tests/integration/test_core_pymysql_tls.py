"""PyMySQL's TLS upgrade, scoped-patched, against a private MariaDB that has a certificate.

PyMySQL upgrades a plain socket in place (``ctx.wrap_socket(self._sock, ...)``); with
``greenasync.patch("pymysql")`` its ``ssl`` is greenasync's, so the context is green and the
wrapped socket is the cooperative ``greenasync.green.ssl.SSLSocket``: TLS reads park the
greenlet instead of blocking the loop. A stdlib ``SSLSocket`` would block the loop for the
whole of every query.

The server is started once for the module (commands as in the infra notes: private datadir
owned by the Debian ``mysql`` user, ``--no-defaults``), with the repo's test certificate.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pymysql
import pytest

import greenasync
from greenasync.green import ssl as green_ssl

CERTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "certs")
CERT = os.path.join(CERTS, "localhost.crt")
KEY = os.path.join(CERTS, "localhost.key")
START_TIMEOUT = 30


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _ping(port):
    try:
        conn = pymysql.connect(host="127.0.0.1", port=port, user="root", ssl_disabled=True,
                               connect_timeout=1)
    except pymysql.err.OperationalError:
        return False
    conn.close()
    return True


@pytest.fixture(scope="module")
def tls_mariadb():
    """Port of a private MariaDB on 127.0.0.1 with TLS (the repo's localhost certificate)."""
    missing = [name for name in ("mariadbd", "mariadb-install-db") if shutil.which(name) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: install mariadb-server "
                    "(apt-get install -y --no-install-recommends mariadb-server)")
    base = tempfile.mkdtemp(prefix="greenasync-mariadb-tls-")
    proc = None
    try:
        os.chmod(base, 0o755)  # mkdtemp makes 0700; the mysql user must traverse it
        mysql_dir = os.path.join(base, "mysql")
        data = os.path.join(mysql_dir, "data")
        os.makedirs(data)
        cert = shutil.copy(CERT, os.path.join(mysql_dir, "server.crt"))
        key = shutil.copy(KEY, os.path.join(mysql_dir, "server.key"))
        subprocess.run(["chown", "-R", "mysql:mysql", mysql_dir], check=True)
        log = os.path.join(mysql_dir, "error.log")
        started = time.monotonic()
        install = subprocess.run(
            ["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={data}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if install.returncode != 0:
            pytest.fail(f"mariadb-install-db failed ({install.returncode}): {install.stderr}")
        port = _free_port()
        proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", "--user=mysql", f"--datadir={data}",
             f"--socket={mysql_dir}/mysql.sock", f"--port={port}", "--bind-address=127.0.0.1",
             f"--pid-file={mysql_dir}/mysqld.pid", f"--log-error={log}", "--skip-log-bin",
             "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0",
             "--innodb-doublewrite=0", f"--ssl-cert={cert}", f"--ssl-key={key}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(port):
            if proc.poll() is not None:
                pytest.fail(f"mariadbd exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"mariadbd did not accept connections in {START_TIMEOUT} s:\n"
                            f"{_tail(log)}")
            time.sleep(0.05)
        print(f"private TLS MariaDB on port {port} up in {time.monotonic() - started:.2f} s")
        yield port
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: mariadbd's normal shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def patched_pymysql():
    greenasync.patch("pymysql")
    yield
    greenasync.unpatch("pymysql")


def connect(port):
    # Verified TLS: the repo's certificate is self-signed with SAN IP:127.0.0.1, so it is
    # its own CA and the identity check passes. TLS is required, not merely preferred.
    return pymysql.connect(host="127.0.0.1", port=port, user="root", ssl_ca=CERT,
                           ssl_verify_cert=True, ssl_verify_identity=True, connect_timeout=5)


def cipher(conn):
    with conn.cursor() as cursor:
        cursor.execute("SHOW STATUS LIKE 'Ssl_cipher'")
        return cursor.fetchone()[1]


async def test_connection_is_tls_over_a_green_ssl_socket(tls_mariadb):
    conn = await greenasync.run(connect, tls_mariadb)
    try:
        assert isinstance(conn._sock, green_ssl.SSLSocket), type(conn._sock)
        assert conn._sock.version() is not None  # handshake done
        assert await greenasync.run(cipher, conn)  # the server sees TLS on this session
    finally:
        conn.close()


async def test_concurrent_tls_queries_overlap_without_stalling_the_loop(tls_mariadb, ticker):
    # Connect before the ticker: each connection builds an SSLContext (~50 ms of CPU on the
    # loop thread, loading the CA), which is CPU, not waiting.
    connections = await asyncio.gather(*[greenasync.run(connect, tls_mariadb) for _ in range(10)])
    try:
        for conn in connections:
            assert isinstance(conn._sock, green_ssl.SSLSocket), type(conn._sock)

        def query(conn, i):
            with conn.cursor() as cursor:
                cursor.execute("SELECT SLEEP(0.5), %s", (i,))
                return cursor.fetchone()[1]

        async with ticker() as t:
            start = time.monotonic()
            results = await asyncio.gather(
                *[greenasync.run(query, conn, i) for i, conn in enumerate(connections)]
            )
            elapsed = time.monotonic() - start
        assert results == list(range(10))
        # 10 x 0.5 s over 10 connections: ~0.5 s if they overlap, 5 s if serialized.
        assert elapsed < 2, f"{elapsed:.2f} s"
        assert t.max_gap < 0.05, f"loop stalled {t.max_gap * 1000:.1f} ms"
        assert all(await asyncio.gather(*[greenasync.run(cipher, c) for c in connections]))
    finally:
        for conn in connections:
            conn.close()


async def test_a_stdlib_ssl_context_still_passes_the_library_type_check(tls_mariadb):
    # Inside patched pymysql, `ssl.SSLContext` is the shim class; PyMySQL's
    # isinstance(ssl, ssl.SSLContext) must still accept a stdlib context (it used to take it
    # for a dict and fail with AttributeError).
    import ssl

    context = ssl.create_default_context(cafile=CERT)
    context.sslsocket_class = green_ssl.SSLSocket  # documented way to make it cooperative

    def tls_query():
        conn = pymysql.connect(host="127.0.0.1", port=tls_mariadb, user="root", ssl=context,
                               connect_timeout=5)
        try:
            return type(conn._sock), cipher(conn)
        finally:
            conn.close()

    sock_type, negotiated = await greenasync.run(tls_query)
    assert sock_type is green_ssl.SSLSocket
    assert negotiated
