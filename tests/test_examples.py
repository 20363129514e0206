"""The examples run as the README runs them: a subprocess of this interpreter.

examples/auth_service.py's selftest against the real Redis (conftest's ``redis_url``) and,
with REDIS_URL on a dead loopback port, against its embedded fakeredis; and its serve mode
answering real HTTP and stopping cleanly on Ctrl-C. The selftest uses run-unique keys and
deletes them; the serve test uses its own prefix and a provider that never fails (no keys).
examples/tornado_mongo.py's selftest with no MONGODB_URI (it starts the in-repo wire server)
and with MONGODB_URI (the real server if set, else a wire server this test starts); it uses
and drops a database of its own.
The subprocesses run with ``-W error`` (warnings are errors, as in this suite).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTH = os.path.join(ROOT, "examples", "auth_service.py")
REQUESTS = 30
KINDS = ("ok", "rejected", "unavailable", "failed-open", "unexpected")


def selftest(redis_url, *args):
    """Run the selftest; return (stdout, stderr, summary counts, {key: counter value})."""
    env = dict(os.environ, REDIS_URL=redis_url)
    # --check-timeout 2: a loaded CI box still gets real answers; only the seeded stalls
    # (and 503s) fail, so every run has failures whatever the timing.
    proc = subprocess.run(
        [sys.executable, "-W", "error", AUTH, "--selftest", "--requests", str(REQUESTS),
         "--check-timeout", "2", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=40)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert "selftest: PASS" in out, out
    assert "Traceback" not in err and "Exception ignored" not in err, err
    counts = {k: int(re.search(rf"\b{k}: (\d+)", out).group(1)) for k in KINDS}
    counters = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in
                re.finditer(r"counter (\S+) = (\d+) \(ttl (-?\d+) s\)", out)}
    return out, err, counts, counters


def check_summary(out, err, counts, counters, threshold, window=60):
    assert sum(counts.values()) == REQUESTS, out
    assert counts["unexpected"] == 0, out
    failed = counts["unavailable"] + counts["failed-open"]
    # The seeded provider fails (503 or stall) on a fixed share of its draws: never zero.
    assert failed > 0, out
    assert counts["ok"] > 0, out  # with a 2 s timeout the healthy answers arrive
    # One counter per window touched, under the run's own prefix, with a TTL of 2 windows.
    assert counters, out
    for key, (value, ttl) in counters.items():
        assert re.fullmatch(r"greenasync:example:auth:selftest:[0-9a-f]{8}:failures:\d+", key)
        assert 0 < ttl <= 2 * window, (key, ttl)
    assert sum(v for v, _ in counters.values()) == failed, out
    # Per window: the first `threshold` failures are refused (503), the rest fail open.
    assert counts["unavailable"] == sum(min(v, threshold) for v, _ in counters.values()), out
    assert counts["failed-open"] == sum(max(0, v - threshold) for v, _ in counters.values())
    # Loudly: one ERROR as each window crosses the threshold, a WARNING per login let in.
    crossed = sum(1 for v, _ in counters.values() if v > threshold)
    assert err.count("ERROR auth_service: FAIL-OPEN") == crossed, err
    assert err.count("auth_service: FAIL-OPEN") == counts["failed-open"], err


def test_auth_selftest_on_real_redis(redis_url):
    out, err, counts, counters = selftest(redis_url, "--threshold", "2")
    assert "embedded" not in out.lower() and "EMBEDDED" not in err, out + err
    assert re.search(r"redis redis://127\.0\.0\.1:\d+/\d+, threshold 2 ", out), out
    check_summary(out, err, counts, counters, threshold=2)
    assert counts["failed-open"] > 0, out  # threshold 2 is crossed
    # The selftest deleted its keys from the shared Redis.
    with redis.Redis.from_url(redis_url) as client:
        assert client.exists(*counters) == 0


def test_auth_selftest_below_threshold_fails_closed(redis_url):
    out, err, counts, counters = selftest(redis_url, "--threshold", "1000")
    check_summary(out, err, counts, counters, threshold=1000)
    assert counts["failed-open"] == 0 and counts["unavailable"] > 0, out
    assert "FAIL-OPEN" not in err, err


def test_auth_selftest_without_redis_uses_embedded_fakeredis():
    pytest.importorskip("fakeredis")
    # A bound, never-listening loopback socket: connecting to it is refused, for certain.
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        out, err, counts, counters = selftest(f"redis://127.0.0.1:{dead_port}/0",
                                              "--threshold", "3")
    assert f"no Redis at redis://127.0.0.1:{dead_port}/0" in err, err
    started = re.search(r"EMBEDDED REDIS: started fakeredis at redis://127\.0\.0\.1:(\d+)/0", err)
    assert started and int(started.group(1)) != dead_port, err
    assert f"redis redis://127.0.0.1:{started.group(1)}/0 (embedded fakeredis)" in out, out
    check_summary(out, err, counts, counters, threshold=3)
    assert counts["failed-open"] > 0, out


def test_auth_serve_mode_answers_and_stops_on_ctrl_c(redis_url):
    prefix = f"greenasync:test:examples:{uuid.uuid4().hex}"
    env = dict(os.environ, REDIS_URL=redis_url)
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", AUTH, "--port", "0", "--fail-rate", "0",
         "--prefix", prefix], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
        # A shell's background job inherits SIGINT ignored; Ctrl-C must reach this child.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stderr.readline()  # the first line announces the port
        port = re.search(r"auth service on http://127\.0\.0\.1:(\d+)/login", line)
        assert port, line

        def login(body):
            req = urllib.request.Request(f"http://127.0.0.1:{port.group(1)}/login", data=body)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                with exc:
                    return exc.code, exc.read()

        status, body = login(b'{"user": "alice"}')
        assert (status, json.loads(body)) == (200, {"user": "alice", "allowed": True,
                                                     "fail_open": False})
        status, body = login(b'{"user": "mallory"}')
        assert (status, json.loads(body)["allowed"]) == (403, False)
        assert login(b"not json")[0] == 400
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the service closes everything and exits
        rest = proc.communicate(timeout=10)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest and "Exception ignored" not in rest, rest
    with redis.Redis.from_url(redis_url) as client:  # a provider that never fails: no counter
        assert list(client.scan_iter(match=prefix + "*")) == []


# --- examples/tornado_mongo.py -------------------------------------------------------------

MONGO_EXAMPLE = os.path.join(ROOT, "examples", "tornado_mongo.py")


def mongo_selftest(env):
    proc = subprocess.run([sys.executable, "-W", "error", MONGO_EXAMPLE, "--selftest"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=40)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert "selftest: PASS" in out and "FAIL" not in out, out
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert re.search(r"selftest: 37 requests \(30 concurrent notes first\)", out), out
    return out, err


def test_tornado_mongo_selftest_starts_the_wire_server_without_mongodb_uri():
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    out, err = mongo_selftest(env)
    assert "EMBEDDED MONGODB: started the in-repo wire server at mongodb://127.0.0.1:" in err


def test_tornado_mongo_selftest_uses_mongodb_uri():
    # MONGODB_URI if set (a real server), else a wire server of this test's, named by the var.
    from greenasync.testing.mongo_server import start_process

    uri = os.environ.get("MONGODB_URI")
    server = None if uri else start_process()
    try:
        out, err = mongo_selftest(dict(os.environ, MONGODB_URI=uri or server.uri))
        if server is not None:
            assert server.status()["commands"].get("insert", 0) >= 30  # its notes went there
    finally:
        if server is not None:
            server.stop()
    assert "EMBEDDED" not in err, err
