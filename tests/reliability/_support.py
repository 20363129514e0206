"""Helpers shared by the reliability tests."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def open_fds():
    """The fd numbers open in this process now (sockets, pipes, epoll sets, files)."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def describe_fds(fds, limit=8):
    """``"3: 10->socket:[123], ..."``: how many, and what the first few are."""
    out = []
    for fd in sorted(fds)[:limit]:
        try:
            out.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            out.append(f"{fd}->?")
    more = ", ..." if len(fds) > limit else ""
    return f"{len(fds)}" + (": " + ", ".join(out) + more if fds else "")


def run_script(name, *args, timeout=60, env=None):
    """Run tests/reliability/<name> with this interpreter; return (rc, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, name), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


def last_json(stdout):
    """The last line of ``stdout`` that is a JSON object (scripts report that way)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON report in the script's output:\n{stdout}")
