"""Hybrid shims of blocking stdlib modules.

Each ``greenasync.green.<name>`` mirrors the stdlib module ``<name>``: it defines only the
names it overrides (listed in its ``__greenasync_overrides__``) and hands every other
attribute through to the stdlib module (a module ``__getattr__``), so code written against
the stdlib keeps working. Every override is *hybrid*: inside a greenasync worker greenlet it
parks the greenlet instead of blocking; anywhere else (plain threads, scripts, the loop
thread outside a greenlet) it behaves exactly like the stdlib, timeouts included.

Each override is written the same way: try the non-blocking operation; if it would block,
wait through the bridge (``wait_readable``/``wait_writable``/``Waiter``); retry.

``SHIMS`` maps stdlib module names to shim module names; the scoped patcher reads it.
"""

import importlib

SHIMS = {
    "socket": "greenasync.green.socket",
    "ssl": "greenasync.green.ssl",
    "select": "greenasync.green.select",
    "selectors": "greenasync.green.selectors",
    "time": "greenasync.green.time",
    "threading": "greenasync.green.threading",
    "queue": "greenasync.green.queue",
}


def load(name):
    """Return the shim module for stdlib module ``name`` (e.g. ``"socket"``)."""
    return importlib.import_module(SHIMS[name])
