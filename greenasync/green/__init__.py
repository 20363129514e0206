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


class StandIn(type):
    """Metaclass of a shim class that replaces a stdlib class in patched modules.

    Inside a patched library ``socket.socket`` or ``ssl.SSLContext`` *is* the shim class,
    so the library's own type checks would reject the stdlib objects a user hands it
    (PyMySQL's ``isinstance(ssl, ssl.SSLContext)`` took a stdlib context for a dict).
    ``isinstance``/``issubclass`` against the stand-in itself therefore answer as they would
    against the stdlib class named by its ``_greenasync_stdlib_class``; subclasses of the
    stand-in keep the ordinary checks.
    """

    def __instancecheck__(cls, obj):
        std = cls.__dict__.get("_greenasync_stdlib_class")
        return isinstance(obj, std) if std is not None else super().__instancecheck__(obj)

    def __subclasscheck__(cls, sub):
        std = cls.__dict__.get("_greenasync_stdlib_class")
        return issubclass(sub, std) if std is not None else super().__subclasscheck__(sub)


def load(name):
    """Return the shim module for stdlib module ``name`` (e.g. ``"socket"``)."""
    return importlib.import_module(SHIMS[name])
