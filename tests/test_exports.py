"""The public surface, pinned: a refactor cannot add or drop a public name by accident."""

import greenasync

PUBLIC = {
    # bridge
    "run", "in_green_context", "sleep", "wait_readable", "wait_writable", "to_thread",
    "await_", "Waiter", "TIMED_OUT",
    # patching
    "patch", "unpatch", "patched", "patch_all", "unpatch_all", "PatchReport", "Rebinding",
    # wrapping
    "wrap", "Wrapper", "SyncMethod", "Chain", "Property", "Wraps", "AsyncIter",
    "AsyncIterator", "AsyncContextManager",
    # operability
    "watchdog", "Watchdog", "Stall", "StallFrame", "statistics", "Statistics",
    # lifecycle
    "shutdown",
    # errors
    "GreenasyncError", "NoRunningLoopError", "MissingGreenletError", "ConcurrentUseError",
}


def test_all_lists_exactly_the_public_names():
    assert set(greenasync.__all__) == PUBLIC
    assert len(greenasync.__all__) == len(PUBLIC)  # no duplicates


def test_every_public_name_resolves():
    for name in PUBLIC:
        assert getattr(greenasync, name) is not None, name
