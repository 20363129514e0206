"""greenasync.mongo against Motor 3.7's public API, class by class (Motor is introspected, never
run): every public Motor name exists here with the same kind, or greenasync.mongo's
MOTOR_DIFFERENCES lists it with a reason.

Kinds: "async" (calling it returns an awaitable), "sync" (a plain call), "property". Motor's
awaitable methods are mostly plain functions returning Futures, marked ``is_async_method`` or
``coroutine_annotation``; its no-I/O delegating methods are properties returning the bound
pymongo method (``DelegateMethod``), so a property is a "sync" method when the pymongo
attribute behind it is callable.
"""

import inspect

import motor  # the test extra installs motor 3.7; never run, only introspected
import motor.motor_asyncio as motor_asyncio
import pytest

import greenasync.mongo as gm


# Motor class (AsyncIOMotor<name>) -> ours. Motor's latent cursor is our CommandCursor over a
# latent delegate; its GridOutCursor is our Cursor over gridfs' GridOutCursor.
CLASSES = {
    "Client": gm.MongoClient,
    "Database": gm.Database,
    "Collection": gm.Collection,
    "Cursor": gm.Cursor,
    "CommandCursor": gm.CommandCursor,
    "LatentCommandCursor": gm.CommandCursor,
    "ChangeStream": gm.ChangeStream,
    "ClientSession": gm.ClientSession,
    "GridFSBucket": gm.GridFSBucket,
    "GridIn": gm.GridIn,
    "GridOut": gm.GridOut,
    "GridOutCursor": gm.Cursor,
    "ClientEncryption": None,
}
# Dunders that are API (protocols users write); the rest (__init__, __repr__, __hash__, ...)
# are not compared.
DUNDERS = {"__aenter__", "__aexit__", "__aiter__", "__anext__", "__getattr__", "__getitem__",
           "__call__", "__bool__", "__copy__", "__deepcopy__", "__enter__", "__exit__"}


def public(cls):
    return sorted(n for n in dir(cls) if not n.startswith("_") or n in DUNDERS)


def motor_kind(cls, name):
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, property):
        target = getattr(getattr(cls, "__delegate_class__", None), name, None)
        if getattr(raw.fget, "coroutine_annotation", False):
            return "property"  # fetch_next: a property holding a Future
        return "sync" if callable(target) and not isinstance(target, type) else "property"
    fn = getattr(raw, "__func__", raw)
    if inspect.iscoroutinefunction(fn) or getattr(fn, "is_async_method", False) or \
            getattr(fn, "coroutine_annotation", False):
        return "async"
    return "sync" if callable(fn) else "property"


def our_kind(cls, name):
    raw = inspect.getattr_static(cls, name)
    fn = getattr(raw, "__func__", raw)
    if inspect.isfunction(fn) or inspect.isbuiltin(fn) or isinstance(fn, type(len.__call__)):
        return "async" if inspect.iscoroutinefunction(fn) else "sync"
    return "property"  # a property, wrap()'s passthrough, a constant


def listed(motor_name, ours, name):
    return (f"*.{name}" in gm.MOTOR_DIFFERENCES or
            f"{ours.__name__ if ours else motor_name}.{name}" in gm.MOTOR_DIFFERENCES)


def test_motor_is_3_7():
    assert motor.version.startswith("3.7"), motor.version


@pytest.mark.parametrize("motor_name", sorted(CLASSES))
def test_every_motor_name_is_here_with_the_same_kind_or_listed(motor_name):
    motor_cls = getattr(motor_asyncio, f"AsyncIOMotor{motor_name}")
    ours = CLASSES[motor_name]
    if ours is None:
        assert motor_name in gm.MOTOR_DIFFERENCES, f"{motor_name}: absent and not listed"
        return
    gaps = []
    for name in public(motor_cls):
        want = motor_kind(motor_cls, name)
        if not hasattr(ours, name):
            if not listed(motor_name, ours, name):
                gaps.append(f"{ours.__name__}.{name}: missing (Motor: {want})")
            continue
        got = our_kind(ours, name)
        if got != want and not listed(motor_name, ours, name):
            gaps.append(f"{ours.__name__}.{name}: {got}, Motor: {want}")
    assert not gaps, "not in MOTOR_DIFFERENCES:\n" + "\n".join(gaps)


def test_every_listed_difference_is_real_and_documented():
    # A stale entry (a name Motor lacks, or one we now match) would hide nothing but mislead.
    doc = gm.__doc__
    for key, reason in gm.MOTOR_DIFFERENCES.items():
        assert reason and len(reason.splitlines()) == 1, key
        assert key in doc and reason in doc, f"{key}: not rendered in the module docstring"
        cls_name, _, name = key.partition(".")
        if not name:
            assert CLASSES.get(cls_name, 0) is None, key
            continue
        pairs = [(m, o) for m, o in CLASSES.items() if o is not None and
                 (cls_name == "*" or o.__name__ == cls_name)]
        assert pairs, key
        differs = False
        for motor_name, ours in pairs:
            motor_cls = getattr(motor_asyncio, f"AsyncIOMotor{motor_name}")
            if name in public(motor_cls):
                differs |= not hasattr(ours, name) or \
                    our_kind(ours, name) != motor_kind(motor_cls, name)
        assert differs, f"{key}: listed, but every Motor class having it matches"


def test_the_check_catches_a_missing_name(monkeypatch):
    # The test above must fail when a Motor name is missing and unlisted: drop one and see.
    owner = next(c for c in gm.Collection.__mro__ if "find_one" in vars(c))  # wrap()'s base
    monkeypatch.delattr(owner, "find_one")
    with pytest.raises(AssertionError, match=r"Collection\.find_one: missing"):
        test_every_motor_name_is_here_with_the_same_kind_or_listed("Collection")
    monkeypatch.setitem(gm.MOTOR_DIFFERENCES, "Collection.find_one", "a test's entry")
    test_every_motor_name_is_here_with_the_same_kind_or_listed("Collection")


def test_the_check_catches_a_wrong_kind(monkeypatch):
    monkeypatch.setattr(gm.Collection, "insert_one", lambda self, doc: None)  # not awaitable
    with pytest.raises(AssertionError, match=r"Collection\.insert_one: sync, Motor: async"):
        test_every_motor_name_is_here_with_the_same_kind_or_listed("Collection")
    monkeypatch.setattr(gm.Collection, "find", property(lambda self: None))
    with pytest.raises(AssertionError, match=r"Collection\.find: property, Motor: sync"):
        test_every_motor_name_is_here_with_the_same_kind_or_listed("Collection")
