"""Test helpers shipped with greenasync.

``greenasync.testing.mongo_server``: a MongoDB wire-protocol server backed by mongomock, so
pymongo's real network code can be tested without a ``mongod``.
``greenasync.testing.redis_server``: a throwaway ``redis-server`` on a free port
(``PrivateRedis``), for tests and benchmarks.
Neither is imported here, so ``python -m greenasync.testing.mongo_server`` runs without a
double-import warning.
"""
