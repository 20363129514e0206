"""Out of file descriptors: clear errors, no spinning loop, recovery (emfile_app.py).

In a subprocess with RLIMIT_NOFILE lowered to 256 and every free fd taken: a redis call that
needs a new connection fails at once with redis-py's ``ConnectionError`` naming errno 24;
``accept()`` with a connection pending fails with ``OSError`` EMFILE; over the next second
the idle loop uses almost no CPU (the listener stays readable, and an edge-triggered wait
does not report it again) while its timers keep running; a call parked before the
exhaustion still completes; once fds are free the same client and listener work again.

(A loop whose *first* fd wait meets EMFILE is another matter: see test_bridge_findings.py.)
"""

import json

import pytest

from ._support import run_script


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_emfile_gives_clear_errors_and_the_loop_does_not_spin(kind, redis_url):
    rc, out, err = run_script("emfile_app.py", redis_url, kind, timeout=60)
    assert rc == 0, f"{kind}: rc={rc}\n{out}\n{err[-3000:]}"
    report = json.loads(out.strip().splitlines()[-1])
    figures = f"{kind}: {report}"
    assert report["redis"].startswith("ConnectionError: Error 24 "), figures
    assert "Too many open files" in report["redis"], figures
    assert report["redis_seconds"] < 0.5, figures
    assert report["accept"] == "OSError: errno 24" and report["accept_seconds"] < 0.5, figures
    # 1 s of idle loop: a spinning loop would burn ~1 s of CPU; its timers ran meanwhile.
    assert report["idle_cpu_seconds"] < 0.2, figures
    assert report["idle_ticks"] >= 40, figures
    assert report["parked_call"] == "still alive", figures
    assert report["redis_after"] == "recovered" and report["accept_after"] == "ok", figures
    print(f"\n{figures}")
