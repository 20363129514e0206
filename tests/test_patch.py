"""Scoped patching (greenasync/_patch.py).

The fixture packages live in tests/patch_samples/ (see its README). Every test starts and ends
with nothing patched, no greenasync finder in sys.meta_path and the sample packages forgotten,
because other test files use redis/pymongo unpatched; patches other modules held before are
given back afterwards.

Tests that need a shim that is not written yet skip with its name; the time shim exists, so
every time-based assertion always runs.
"""

import importlib
import inspect
import json
import logging
import os
import random
import select
import selectors
import socket
import ssl
import sys
import threading
import time
import types
import zipfile
import zipimport
from importlib.machinery import SourceFileLoader

import pytest

import greenasync
from greenasync import _patch, green
from greenasync._patch import Rebinding, patch, patch_all, patched, unpatch, unpatch_all

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "patch_samples")
SAMPLE_TOPS = ("gasample", "gasample_other", "ganamespace", "gazipped", "gabrokenshim")
gtime = green.load("time")


def shim(std_name):
    """The shim module for a stdlib module, or skip the test if it is not written yet."""
    try:
        return green.load(std_name)
    except ModuleNotFoundError as e:
        if e.name == green.SHIMS[std_name]:
            pytest.skip(f"{green.SHIMS[std_name]} is not written yet")
        raise


def expected(std_name, attr=None):
    """What a reference to ``std_name[.attr]`` should be after patch: the shim's or unchanged."""
    std = importlib.import_module(std_name)
    try:
        mod = green.load(std_name)
    except ModuleNotFoundError:
        return std if attr is None else getattr(std, attr)
    if attr is None:
        return mod
    return getattr(mod, attr) if attr in mod.__greenasync_overrides__ else getattr(std, attr)


def _forget_samples():
    for name in list(sys.modules):
        if name.partition(".")[0] in SAMPLE_TOPS:
            del sys.modules[name]


def _finders():
    return [f for f in sys.meta_path if isinstance(f, _patch._Finder)]


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    # Other test modules may hold patches across their tests (test_wrap's wrap(patch=...)
    # runs at collection): start from nothing, and give them back afterwards.
    others = list(patched())
    unpatch_all()
    monkeypatch.syspath_prepend(SAMPLES)
    _forget_samples()
    yield
    unpatch_all()
    monkeypatch.undo()  # a test's fake shims must be gone before the re-patch below
    _forget_samples()
    assert _finders() == []
    assert patched() == {}
    if others:
        patch(*others)


def snapshot(*objs):
    """Identity snapshot of namespaces and function defaults, to compare after unpatch."""
    out = {}
    for obj in objs:
        if isinstance(obj, types.FunctionType):
            out[obj] = (obj.__defaults__, dict(obj.__kwdefaults__ or {}))
        else:
            out[obj] = dict(vars(obj))
    return out


def same(before, after):
    """Every key present in both snapshots holds the very same object."""
    for obj, b in before.items():
        a = after[obj]
        if isinstance(b, tuple):
            assert a[0] == b[0] and all(x is y for x, y in zip(a[0] or (), b[0] or ())), obj
            assert a[1].keys() == b[1].keys() and all(a[1][k] is b[1][k] for k in b[1]), obj
        else:
            assert a.keys() == b.keys(), obj
            for key in b:
                assert a[key] is b[key], (obj, key)


# -- the import forms -------------------------------------------------------------------------

FROM_IMPORTS = [  # (global in gasample, stdlib module, attribute)
    ("sleep", "time", "sleep"),
    ("nap", "time", "sleep"),
    ("monotonic", "time", "monotonic"),
    ("Socket", "socket", "socket"),
    ("create_connection", "socket", "create_connection"),
    ("LifoQueue", "queue", "LifoQueue"),
    ("poll", "select", "poll"),
    ("DefaultSelector", "selectors", "DefaultSelector"),
    ("SSLContext", "ssl", "SSLContext"),
    ("Condition", "threading", "Condition"),
    ("Lock", "threading", "Lock"),
    ("RLock", "threading", "RLock"),
    ("allocate_lock", "threading", "Lock"),  # `from _thread import allocate_lock`: same object
]


def test_time_import_forms_are_rebound():
    import gasample

    patch("gasample")
    assert gasample.time is gtime  # import time
    assert gasample.mod_time is gtime  # import time as mod_time
    assert gasample.sleep is gtime.sleep  # from time import sleep
    assert gasample.nap is gtime.sleep  # from time import sleep as nap
    assert gasample.monotonic is time.monotonic  # not overridden by the shim: unchanged
    assert gasample.json is json and gasample.partial.__module__ == "functools"
    unpatch("gasample")
    assert gasample.time is time and gasample.mod_time is time
    assert gasample.sleep is time.sleep and gasample.nap is time.sleep


@pytest.mark.parametrize("std_name", sorted(green.SHIMS))
def test_import_module_form_is_rebound(std_name):
    import gasample

    mod = shim(std_name)
    patch("gasample")
    assert getattr(gasample, std_name) is mod
    unpatch("gasample")
    assert getattr(gasample, std_name) is sys.modules[std_name]


@pytest.mark.parametrize("name, std_name, attr", FROM_IMPORTS, ids=[f[0] for f in FROM_IMPORTS])
def test_from_import_form_is_rebound_by_identity(name, std_name, attr):
    import gasample

    mod = shim(std_name)
    original = getattr(importlib.import_module(std_name), attr)
    assert getattr(gasample, name) is original
    patch("gasample")
    if attr in mod.__greenasync_overrides__:
        assert getattr(gasample, name) is getattr(mod, attr)
    else:
        assert getattr(gasample, name) is original
    unpatch("gasample")
    assert getattr(gasample, name) is original


def test_name_alikes_are_not_rebound():
    from gasample import decoy

    before = snapshot(decoy)
    patch("gasample")
    same(before, snapshot(decoy))  # a `sleep`, a `socket`, a `time` that are other objects


def test_nested_subpackage_and_aliases():
    from gasample.sub import deep

    patch("gasample")
    assert deep.t is gtime and deep.sleep is gtime.sleep
    assert deep.connect is expected("socket", "create_connection")
    assert sys.modules["gasample.sub"].Event is expected("threading", "Event")


# -- what else is rebound: defaults and class attributes --------------------------------------


def test_function_defaults_and_class_attributes():
    import gasample

    C = gasample.Client
    before = snapshot(
        gasample, C, C.Inner, gasample.pause, C.__init__, gasample.wrapped.__wrapped__,
        vars(C)["static_default"].__func__, vars(C)["class_default"].__func__, C.prop.fget,
    )
    patch("gasample")
    assert gasample.pause.__defaults__ == (gtime.sleep,)
    assert gasample.pause.__kwdefaults__["clock"] is time.monotonic  # not overridden
    assert gasample.pause.__kwdefaults__["make_lock"] is expected("threading", "Lock")
    assert C.__init__.__defaults__ == (expected("queue", "LifoQueue"),)
    assert C.__init__.__kwdefaults__["lock_class"] is expected("threading", "RLock")
    # functools.wraps: the library's own function under __wrapped__ is reached.
    assert gasample.wrapped.__wrapped__.__defaults__ == (gtime.sleep,)
    assert vars(C)["static_default"].__func__.__defaults__ == (gtime.sleep,)
    assert vars(C)["class_default"].__func__.__defaults__ == (gtime.sleep,)
    assert C.prop.fget.__defaults__ == (gtime.sleep,)
    # A builtin on a class does not bind self; the Python shim is stored as a staticmethod.
    assert isinstance(vars(C)["sleep"], staticmethod) and C.sleep is gtime.sleep
    assert C.Inner.sleep is gtime.sleep and C.still is gtime.sleep
    assert C.queue_class is expected("queue", "LifoQueue")
    assert C.socket_module is expected("socket")
    client = C()
    assert client.sleep is gtime.sleep
    client.nap(0)  # self.sleep(0): still a one-argument call outside any greenlet
    assert type(client.queue) is expected("queue", "LifoQueue")
    unpatch("gasample")
    same(before, snapshot(*before))
    assert vars(C)["sleep"] is time.sleep  # the raw builtin again, not a staticmethod


def test_redis_blocking_pool_default_queue_class():
    redis = pytest.importorskip("redis")
    lifo = shim("queue").LifoQueue
    init = redis.BlockingConnectionPool.__init__
    defaults = init.__defaults__
    patch("redis")
    try:
        assert lifo in init.__defaults__ and __import__("queue").LifoQueue not in init.__defaults__
        pool = redis.BlockingConnectionPool()  # creates its queue, no connection yet
        assert type(pool.pool) is lifo
        pool.disconnect()
        report = patched()["redis"].rebound
        assert any(r.name == "BlockingConnectionPool.__init__(queue_class=)" for r in report)
    finally:
        unpatch("redis")
    assert len(init.__defaults__) == len(defaults)
    assert all(a is b for a, b in zip(init.__defaults__, defaults))


# -- what is only reported --------------------------------------------------------------------


def test_unreached_references_are_reported_and_logged(caplog):
    import gasample

    with caplog.at_level(logging.WARNING, logger="greenasync"):
        patch("gasample")
    names = {r.name for r in patched()["gasample"].unreached}
    assert {
        "SLEEPERS[0]", "POLICY['sleep']", "delayed['func']",
        "closed (closure s)", "lazy_time (import time inside)",
    } <= names
    assert not any(n.startswith(("relative_import", "load_later", "Client.__annotations__"))
                   for n in names)
    import gasample.sub

    patch("gasample")  # rescan: now with gasample.sub loaded
    assert not any(r.module == "gasample.sub" for r in patched()["gasample"].unreached)
    assert gasample.sub.relative_time() == "gasample.sub.time"
    if "socket" in _patch._modules:
        assert "StdSocket (base class)" in names
    # Still the stdlib object where we cannot reach: reported, not changed.
    assert gasample.SLEEPERS[0] is time.sleep and gasample.POLICY["sleep"] is time.sleep
    assert gasample.lazy_time() is time
    ref = next(r for r in patched()["gasample"].unreached if r.name == "SLEEPERS[0]")
    assert ref == Rebinding("gasample", "SLEEPERS[0]", time.sleep, gtime.sleep)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "gasample:SLEEPERS[0]" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="greenasync"):
        patch("gasample")  # nothing new: no second warning
    assert not caplog.records


# -- the report -------------------------------------------------------------------------------


def test_patched_report_contents():
    import gasample
    import gasample.sub.deep

    assert patched() == {}
    patch("gasample")
    report = patched()
    assert list(report) == ["gasample"]
    rebound = report["gasample"].rebound
    assert Rebinding("gasample", "sleep", time.sleep, gtime.sleep) in rebound
    assert Rebinding("gasample", "mod_time", time, gtime) in rebound
    assert Rebinding("gasample.sub.deep", "t", time, gtime) in rebound
    assert Rebinding("gasample", "Client.sleep", time.sleep, gtime.sleep) in rebound
    assert Rebinding("gasample", "pause(_sleep=)", time.sleep, gtime.sleep) in rebound
    assert list(rebound) == sorted(rebound, key=lambda r: (r.module, r.name))
    assert all(r.module.partition(".")[0] == "gasample" for r in rebound)
    assert not any(r.name == "monotonic" for r in rebound)
    # A name the library rebinds itself is no longer reported, and unpatch leaves it.
    mine = object()
    gasample.sleep = mine
    rebound = patched()["gasample"].rebound
    assert not any(r.name == "sleep" and r.module == "gasample" for r in rebound)
    unpatch("gasample")
    assert gasample.sleep is mine and gasample.nap is time.sleep


# -- idempotency, overlap, errors -------------------------------------------------------------


def test_patch_and_unpatch_are_idempotent():
    import gasample

    patch("gasample")
    once = patched()
    slots = {k: dict(v) for k, v in _patch._slots.items()}
    patch("gasample")
    patch(gasample)  # a module object works too
    assert patched() == once
    assert {k: dict(v) for k, v in _patch._slots.items()} == slots
    assert len(_finders()) == 1
    unpatch("gasample")
    unpatch("gasample")
    unpatch("gasample_other")  # never patched: fine
    assert gasample.sleep is time.sleep and patched() == {} and _finders() == []


def test_overlapping_packages():
    import gasample
    from gasample.sub import deep

    patch("gasample")
    patch("gasample.sub")
    assert list(patched()) == ["gasample", "gasample.sub"]
    unpatch("gasample")
    assert gasample.sleep is time.sleep  # no longer covered
    assert deep.sleep is gtime.sleep  # still covered by gasample.sub
    assert list(patched()) == ["gasample.sub"]
    unpatch("gasample.sub")
    assert deep.sleep is time.sleep and deep.t is time


def test_refuses_stdlib_and_own_machinery():
    for name in ("socket", "json", "os.path", "asyncio", "greenasync", "greenasync.green",
                 "greenlet", "tornado", "uvloop"):
        with pytest.raises(ValueError, match="never patches"):
            patch(name)
    for bad in ("", "a..b", "1abc", "red is"):
        with pytest.raises(ValueError):
            patch(bad)
    with pytest.raises(TypeError):
        patch(3)
    with pytest.raises(TypeError):
        patch()
    with pytest.raises(TypeError):
        unpatch()
    assert patched() == {} and _finders() == []


def test_unknown_package_is_a_clear_error():
    for name in ("gasampel", "gasample.nope", "no_such_top_level_pkg.sub"):
        with pytest.raises(ModuleNotFoundError, match=name.replace(".", r"\.")) as info:
            patch(name)
        assert info.value.name == name
    with pytest.raises(ModuleNotFoundError):
        patch("gasample_other", "gasampel")  # all or nothing
    assert patched() == {} and _finders() == []


# -- later imports ----------------------------------------------------------------------------


def test_patch_before_import_does_not_import_and_covers_later_imports():
    patch("gasample")
    assert "gasample" not in sys.modules  # patch() only checked that it exists
    assert sys.meta_path[0] is _finders()[0]
    import gasample
    from gasample.sub import deep

    assert gasample.sleep is gtime.sleep and gasample.mod_time is gtime
    assert deep.t is gtime
    assert gasample.pause.__defaults__ == (gtime.sleep,)


def test_module_imported_lazily_by_a_function_after_patch():
    import gasample

    patch("gasample")
    assert "gasample.later" not in sys.modules
    later = gasample.load_later()
    assert later.sleep is gtime.sleep
    assert later.socket is expected("socket")
    # The module ran and ended with its real loader, as after a plain import.
    assert type(later.__loader__) is SourceFileLoader
    assert later.__spec__.loader is later.__loader__
    assert later.LOADER_DURING_IMPORT is later.__loader__
    assert later.SPEC_LOADER_DURING_IMPORT is later.__loader__
    assert "LOADER_DURING_IMPORT" in inspect.getsource(later)


def test_package_data_read_during_a_patched_import():
    patch("gasample")
    from gasample import reads_data as rd

    assert rd.DATA == "resource data\n" and rd.time is gtime


def test_import_error_passes_through_unchanged():
    patch("gasample")
    with pytest.raises(Exception, match="failed on purpose") as info:
        import gasample.broken
    assert type(info.value).__name__ == "BrokenLibraryError"
    assert type(info.value).__module__ == "gasample.broken"
    assert "gasample.broken" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        import gasample.does_not_exist  # noqa: F401


def test_reload_keeps_a_patched_module_patched():
    patch("gasample")
    from gasample.sub import deep

    deep.t = "set by the test"
    deep = importlib.reload(deep)
    assert deep.t is gtime and deep.sleep is gtime.sleep  # re-executed, then re-patched
    assert type(deep.__loader__) is SourceFileLoader and deep.__spec__.loader is deep.__loader__
    unpatch("gasample")
    assert deep.t is time
    deep = importlib.reload(deep)
    assert deep.t is time and type(deep.__loader__) is SourceFileLoader


def test_namespace_package():
    patch("ganamespace")
    from ganamespace import mod

    assert mod.time is gtime and mod.sleep is gtime.sleep
    assert getattr(sys.modules["ganamespace"], "__file__", None) is None  # still a namespace
    unpatch("ganamespace")
    assert mod.time is time


def test_zipimport(tmp_path, monkeypatch):
    archive = tmp_path / "gazipped.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("gazipped/__init__.py", "from time import sleep\n")
        z.writestr("gazipped/mod.py", "import time\n")
    monkeypatch.syspath_prepend(str(archive))
    patch("gazipped")
    import gazipped
    import gazipped.mod

    assert gazipped.sleep is gtime.sleep and gazipped.mod.time is gtime
    assert isinstance(gazipped.__loader__, zipimport.zipimporter)
    assert isinstance(gazipped.mod.__spec__.loader, zipimport.zipimporter)
    unpatch("gazipped")
    assert gazipped.sleep is time.sleep and gazipped.mod.time is time


def test_module_without_spec_or_loader():
    import gasample_other

    synthetic = types.ModuleType("gasample_other.synthetic")  # no __spec__, no loader
    synthetic.sleep = time.sleep
    sys.modules["gasample_other.synthetic"] = synthetic
    gasample_other.synthetic = synthetic
    patch("gasample_other")
    assert synthetic.sleep is gtime.sleep
    unpatch("gasample_other")
    assert synthetic.sleep is time.sleep


def test_odd_module_objects_and_classes_do_not_stop_patching(caplog):
    import gasample_other

    class NoDict(types.ModuleType):  # like cffi's Lib: a ModuleType without a __dict__
        @property
        def __dict__(self):
            raise AttributeError("__dict__")

    class Unscannable(type):  # reading __module__ raises
        @property
        def __module__(cls):
            raise RuntimeError("no module for you")

    class Frozen(type):  # like an immutable extension type
        def __setattr__(cls, key, value):
            raise TypeError(f"cannot set {key!r} attribute of immutable type")

    odd = types.ModuleType("gasample_other.odd")
    odd.Bad = Unscannable("Bad", (), {})
    odd.Sealed = Frozen("Sealed", (), {"sleep": time.sleep, "__module__": odd.__name__})
    odd.sleep = time.sleep
    sys.modules["gasample_other.odd"] = odd
    sys.modules["gasample_other.nodict"] = NoDict("gasample_other.nodict")
    with caplog.at_level(logging.WARNING, logger="greenasync"):
        patch("gasample_other")
    assert odd.sleep is gtime.sleep and gasample_other.sleep is gtime.sleep
    assert vars(odd.Sealed)["sleep"] is time.sleep  # could not write: reported instead
    report = patched()["gasample_other"]
    sealed = Rebinding("gasample_other.odd", "Sealed.sleep", time.sleep, gtime.sleep)
    assert sealed in report.unreached
    assert any("cannot scan gasample_other.odd Bad" in r.getMessage() for r in caplog.records)
    unpatch("gasample_other")
    assert odd.sleep is time.sleep


def test_a_failing_patch_leaves_nothing_behind(monkeypatch):
    import gasample  # noqa: F401

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(_patch, "_patch_modules", boom)
    with pytest.raises(KeyboardInterrupt):
        patch("gasample")
    assert patched() == {} and _finders() == []


def test_meta_path_is_replaced_never_mutated():
    # An import in another thread iterates the list it read once; removing an entry in place
    # would make it skip the next finder (PathFinder, say) and fail spuriously.
    seen = sys.meta_path
    entries = list(seen)
    patch("gasample")
    assert sys.meta_path is not seen and seen == entries
    assert sys.meta_path[1:] == entries
    installed = sys.meta_path
    unpatch("gasample")
    assert installed[0] is _patch._finder and len(installed) == len(entries) + 1
    assert sys.meta_path == entries


def test_finder_stays_first():
    class Other:
        def find_spec(self, *args):
            return None

    other = Other()
    patch("gasample")
    sys.meta_path.insert(0, other)
    try:
        patch("gasample_other")
        assert isinstance(sys.meta_path[0], _patch._Finder)
        from gasample import later

        assert later.sleep is gtime.sleep
    finally:
        sys.meta_path.remove(other)


# -- scope: the stdlib and other packages -----------------------------------------------------


def test_stdlib_modules_are_never_modified():
    import gasample
    import gasample_other  # noqa: F401

    pytest.importorskip("redis.connection")
    pytest.importorskip("pymongo")
    std_names = sorted(green.SHIMS) + ["_thread", "_socket", "builtins", "json"]
    before = {n: dict(vars(importlib.import_module(n))) for n in std_names}
    identities = (socket.socket, time.sleep, threading.Lock, threading.RLock, select.poll,
                  selectors.DefaultSelector, ssl.SSLContext, __import__("queue").LifoQueue)
    # A stdlib module under a package's key (six.moves does this) must not let us in: one
    # that is shimmed and one that is not (socketserver imports socket, threading, time).
    import socketserver

    std_names.append("socketserver")
    before["socketserver"] = dict(vars(socketserver))
    sys.modules["gasample.alias_of_queue"] = sys.modules["queue"]
    sys.modules["gasample.alias_of_socketserver"] = socketserver
    try:
        patch("gasample", "redis", "pymongo")
        patch("gasample_other")
        for n in std_names:
            after = vars(sys.modules[n])
            assert after.keys() == before[n].keys(), n
            assert all(after[k] is v for k, v in before[n].items()), n
        assert gasample.sleep is gtime.sleep
        unpatch("gasample", "redis", "pymongo", "gasample_other")
    finally:
        del sys.modules["gasample.alias_of_queue"], sys.modules["gasample.alias_of_socketserver"]
    for n in std_names:
        assert all(vars(sys.modules[n])[k] is v for k, v in before[n].items()), n
    assert (socket.socket, time.sleep, threading.Lock, threading.RLock, select.poll,
            selectors.DefaultSelector, ssl.SSLContext, __import__("queue").LifoQueue) == identities


def test_other_packages_and_modules_untouched():
    import gasample
    import gasample_other

    before = snapshot(gasample_other, json, sys.modules[__name__])
    patch("gasample")
    same(before, snapshot(*before))  # same prefix, another package; the stdlib; this test module
    assert gasample_other.sleep is time.sleep
    assert all(r.module.partition(".")[0] == "gasample" for r in patched()["gasample"].rebound)
    assert gasample.sleep is gtime.sleep


# -- shims appearing later --------------------------------------------------------------------


def test_shims_are_loaded_lazily_and_picked_up_when_they_appear(monkeypatch):
    import gasample

    # Pretend there were a json shim that is not written yet (isolated copies of the map).
    monkeypatch.setattr(_patch, "_map", dict(_patch._map))
    monkeypatch.setattr(_patch, "_modules", dict(_patch._modules))
    monkeypatch.setitem(green.SHIMS, "json", "gasample_json_shim")
    patch("gasample")  # no error: the missing shim is skipped
    assert gasample.json is json and "json" not in _patch._modules
    unpatch("gasample")
    fake = types.ModuleType("gasample_json_shim")
    fake.__greenasync_stdlib__ = json
    fake.__greenasync_overrides__ = ("dumps",)
    fake.dumps = lambda *a, **k: "green"
    monkeypatch.setitem(sys.modules, "gasample_json_shim", fake)
    patch("gasample")  # the new shim is included from now on
    assert gasample.json is fake
    unpatch("gasample")
    assert gasample.json is json


def test_builtins_and_plain_values_are_never_keys(monkeypatch):
    import gasample_other

    # A fake stdlib module and its shim, overriding a builtin (select.error is OSError,
    # socket.timeout is TimeoutError), a plain int and a real function.
    fakestd = types.ModuleType("gasample_fakestd")
    fakestd.error, fakestd.limit, fakestd.tick = OSError, 5, lambda: "std"
    fake = types.ModuleType("gasample_fake_shim")
    fake.__greenasync_stdlib__ = fakestd
    fake.__greenasync_overrides__ = ("error", "limit", "tick")
    fake.error, fake.limit, fake.tick = type("error", (OSError,), {}), 6, lambda: "green"
    monkeypatch.setattr(_patch, "_map", dict(_patch._map))
    monkeypatch.setattr(_patch, "_modules", dict(_patch._modules))
    monkeypatch.setitem(green.SHIMS, "gasample_fakestd", "gasample_fake_shim")
    monkeypatch.setitem(sys.modules, "gasample_fake_shim", fake)
    gasample_other.err, gasample_other.n, gasample_other.tick = OSError, 5, fakestd.tick
    patch("gasample_other")
    assert gasample_other.err is OSError and gasample_other.n == 5  # everybody's: untouched
    assert gasample_other.tick is fake.tick
    unpatch("gasample_other")
    assert gasample_other.tick is fakestd.tick


def test_a_shim_that_fails_to_import_is_an_error(monkeypatch, tmp_path):
    (tmp_path / "gabrokenshim.py").write_text("import gasample_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_patch, "_map", dict(_patch._map))
    monkeypatch.setattr(_patch, "_modules", dict(_patch._modules))
    monkeypatch.setitem(green.SHIMS, "json", "gabrokenshim")
    with pytest.raises(ModuleNotFoundError, match="gasample_no_such_dependency"):
        patch("gasample")
    assert patched() == {}


# -- threads ----------------------------------------------------------------------------------


def _check_consistent():
    """Every sample module is either fully patched or fully stdlib, matching patched()."""
    import gasample
    from gasample.sub import deep

    active = patched()
    top = "gasample" in active
    sub = top or "gasample.sub" in active
    assert (gasample.sleep is gtime.sleep) is top and (gasample.mod_time is gtime) is top
    assert (gasample.pause.__defaults__ == (gtime.sleep,)) is top
    assert (gasample.Client.sleep is gtime.sleep) is top
    assert (deep.sleep is gtime.sleep) is sub and (deep.t is gtime) is sub
    if not top:
        assert gasample.sleep is time.sleep and vars(gasample.Client)["sleep"] is time.sleep


def test_concurrent_patch_unpatch_ends_consistent():
    import gasample
    import gasample.sub.deep  # noqa: F401

    errors, barrier = [], threading.Barrier(8)

    def worker(seed):
        rnd = random.Random(seed)
        try:
            barrier.wait()
            for _ in range(150):
                name = rnd.choice(["gasample", "gasample.sub"])
                action = rnd.choice([patch, unpatch, unpatch, patched])
                action() if action is patched else action(name)
        except Exception as e:  # noqa: BLE001 - any error in a thread fails the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    _check_consistent()
    patch("gasample")
    _check_consistent()
    unpatch_all()
    _check_consistent()


def test_concurrent_imports_while_patched():
    patch("gasample")
    names = ["gasample", "gasample.sub.deep", "gasample.later", "gasample.reads_data"] * 2
    errors, mods, barrier = [], [], threading.Barrier(len(names))

    def worker(name):
        try:
            barrier.wait()
            mods.append(importlib.import_module(name))
        except Exception as e:  # noqa: BLE001 - any error in a thread fails the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(mods) == len(names)
    import gasample

    assert gasample.sleep is gtime.sleep
    assert sys.modules["gasample.later"].sleep is gtime.sleep
    assert sys.modules["gasample.sub.deep"].t is gtime
    assert sys.modules["gasample.reads_data"].time is gtime


# -- patch_all --------------------------------------------------------------------------------


def test_patch_all_and_unpatch_all():
    import gasample
    import gasample_other
    import tornado.ioloop

    from greenasync import _bridge

    guarded = snapshot(_bridge, tornado.ioloop, gtime, *[sys.modules[n] for n in green.SHIMS])
    this_module = sys.modules[__name__]
    patch_all()
    try:
        assert list(patched()) == ["*"]
        assert gasample.sleep is gtime.sleep and gasample_other.sleep is gtime.sleep
        assert this_module.time is gtime  # patch_all reaches any non-stdlib module
        import ganamespace.mod  # later imports too

        assert ganamespace.mod.time is gtime
        same(guarded, snapshot(*guarded))  # stdlib, greenasync, tornado: never
    finally:
        unpatch_all()
    assert this_module.time is time and gasample.sleep is time.sleep
    assert gasample_other.sleep is time.sleep and ganamespace.mod.time is time
    assert _finders() == [] and patched() == {}


# -- real libraries ---------------------------------------------------------------------------


def test_redis_time_references():
    pytest.importorskip("redis")
    import redis.client
    import redis.lock
    import redis.retry

    started = time.perf_counter()
    patch("redis")
    elapsed = time.perf_counter() - started
    try:
        assert redis.retry.sleep is gtime.sleep  # from time import sleep
        assert redis.lock.mod_time is gtime  # import time as mod_time
        assert redis.client.time is gtime  # import time
        assert elapsed < 0.25, f"patch('redis') took {elapsed * 1e3:.1f} ms"  # a few ms here
        retry = Rebinding("redis.retry", "sleep", time.sleep, gtime.sleep)
        assert retry in patched()["redis"].rebound
    finally:
        unpatch("redis")
    assert redis.retry.sleep is time.sleep and redis.lock.mod_time is time
    assert redis.client.time is time


def test_redis_socket_and_threading():
    pytest.importorskip("redis")
    import redis.client
    import redis.connection

    gsocket, gthreading = shim("socket"), shim("threading")
    patch("redis")
    try:
        assert redis.connection.socket is gsocket
        assert redis.client.threading is gthreading  # single_connection_client's RLock
    finally:
        unpatch("redis")
    assert redis.connection.socket is socket and redis.client.threading is threading


def test_pymongo():
    pytest.importorskip("pymongo")
    import pymongo.lock
    import pymongo.pool_shared
    import pymongo.synchronous.mongo_client
    import pymongo.synchronous.pool

    create_condition = pymongo.synchronous.pool._create_condition
    patch("pymongo")
    try:
        assert pymongo.synchronous.mongo_client.time is gtime
        # A pymongo function: unchanged, but the `threading` it calls through is the shim.
        assert pymongo.synchronous.pool._create_condition is create_condition
        assert pymongo.lock.threading is shim("threading")
        assert pymongo.pool_shared.socket is shim("socket")
    finally:
        unpatch("pymongo")
    assert pymongo.lock.threading is threading and pymongo.pool_shared.socket is socket
    assert pymongo.synchronous.mongo_client.time is time


def test_pymysql():
    pytest.importorskip("pymysql")
    import pymysql.connections

    gsocket = shim("socket")
    patch("pymysql")
    try:
        assert pymysql.connections.socket is gsocket
    finally:
        unpatch("pymysql")
    assert pymysql.connections.socket is socket


def test_public_exports():
    names = ["patch", "unpatch", "patched", "patch_all", "unpatch_all"]
    if not hasattr(greenasync, "patch"):
        pytest.skip("greenasync/__init__.py does not export the patch API yet")
    for name in names:
        assert getattr(greenasync, name) is getattr(_patch, name)
