"""redis-py's own sync test suite, run plain and with every test body in a greenasync greenlet
(tests/redis_suite: the runner, the plugin, and the README with the figures).

The CI files (commands, pipelines, pub/sub, locks, connection pools) run here; the whole
suite is ``python tests/redis_suite/run.py --all``. Needs network access once (pip fetches
the redis sdist of the installed version into a cache) and ``redis-server`` (each mode gets
a private one: the suite flushes its server).
"""

import faulthandler
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

RUNNER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "redis_suite", "run.py")
_spec = importlib.util.spec_from_file_location("greenasync_redis_suite_run", RUNNER)
suite_runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(suite_runner)


@pytest.mark.timeout(900)
def test_redis_py_suite_same_outcomes_in_greenlets(tmp_path):
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed: tests/redis_suite needs it to start a "
                    "private Redis for redis-py's suite (which flushes its server)")
    # The two runs take minutes; pytest-timeout (the mark above) guards this test, so
    # pytest's faulthandler_timeout stack dump would only be noise.
    faulthandler.cancel_dump_traceback_later()
    out = tmp_path / "summary.json"
    # Its own session: whatever happens here (a timeout, ^C), the runner, both pytest runs
    # and the private redis-servers are stopped as one process group.
    proc = subprocess.Popen(
        [sys.executable, RUNNER, "--timeout", "800", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=880)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the runner stops its servers and runs
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert out.is_file(), f"the runner produced no summary (exit {proc.returncode}):\n" \
                          f"{output[-6000:]}"
    summary = json.loads(out.read_text())
    figures = (f"plain {summary['plain']['total']} in {summary['plain']['seconds']:.0f} s, "
               f"green {summary['green']['total']} in {summary['green']['seconds']:.0f} s")
    assert proc.returncode == 0 and summary["ok"], f"{figures}\n{output[-6000:]}"
    assert summary["green"]["greenasync"]["calls"] > 0, figures
    assert set(summary["files"]) == {f"tests/{name}" for name in suite_runner.CI_FILES}, figures


def _doc(outcomes):
    return {"tests": {k: {"outcome": v, "message": ""} for k, v in outcomes.items()},
            "seconds": 1.0, "greenasync": {"calls": len(outcomes)}}


class _Run:
    seconds = 1.0


def test_runner_comparison_flags_differences(monkeypatch, capsys):
    # The comparison itself, on made-up outcomes: equal runs pass; an undocumented
    # difference fails; a documented one passes only if it happens (when the test ran).
    plain = {"tests/test_a.py::t1": "passed", "tests/test_a.py::t2": "failed"}
    runs = {"plain": _Run(), "green": _Run()}
    report = suite_runner.report
    monkeypatch.setattr(suite_runner, "EXPECTED_DIFFERENCES", {})
    assert report(_doc(plain), _doc(plain), runs)[0]
    green = dict(plain, **{"tests/test_a.py::t1": "failed"})
    ok, summary = report(_doc(plain), _doc(green), runs)
    assert not ok and summary["unexpected"] == {"tests/test_a.py::t1": ["passed", "failed"]}
    monkeypatch.setattr(suite_runner, "EXPECTED_DIFFERENCES",
                        {"tests/test_a.py::t1": ("passed", "failed", "a documented cause")})
    assert report(_doc(plain), _doc(green), runs)[0]
    ok, summary = report(_doc(plain), _doc(plain), runs)
    assert not ok and summary["documented_but_missing"] == {
        "tests/test_a.py::t1": ["passed", "failed"]}
    # ...but a documented difference of a test that did not run is not required.
    other = {"tests/test_b.py::t1": "passed"}
    assert report(_doc(other), _doc(other), runs)[0]
    # A green run that ran no test body in a greenlet is a failure, not an agreement.
    assert not report(_doc(plain), dict(_doc(plain), greenasync={"calls": 0}), runs)[0]
    capsys.readouterr()
