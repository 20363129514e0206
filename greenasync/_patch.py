"""Scoped patching (stub: being written; see issue 2 "Scoped patching")."""

__all__ = ["patch", "unpatch", "patched"]


def patch(*packages):
    raise NotImplementedError


def unpatch(*packages):
    raise NotImplementedError


def patched():
    raise NotImplementedError
