"""Real servers for the integration tests.

Each is found through an environment variable with this machine's default. When the
default Redis is unreachable and ``redis-server`` is installed, a private one is started on
a free port for the session. A server that can be neither reached nor started fails the
test with a message naming it and the variable to set.
"""

import os
import shutil
import urllib.parse

import pytest

# The benchmarks use the same (one copy, shipped as greenasync.testing.redis_server).
from greenasync.testing.redis_server import PrivateRedis, free_port, reachable  # noqa: F401


def redis_url():
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urllib.parse.urlparse(url)
    if reachable(parts.hostname or "127.0.0.1", parts.port or 6379):
        return url, None
    if shutil.which("redis-server"):
        server = PrivateRedis()
        return server.url, server
    pytest.fail(f"Redis is not reachable at REDIS_URL={url} and redis-server is not installed "
                "to start a private one; start Redis or set REDIS_URL")


def mysql_params():
    host = os.environ.get("MYSQL_HOST", "127.0.0.1")
    port = int(os.environ.get("MYSQL_PORT", "3306"))
    if not reachable(host, port):
        pytest.fail(f"MariaDB/MySQL is not reachable at MYSQL_HOST={host} MYSQL_PORT={port}; "
                    "start it (user root, no password, database test) or set those variables")
    return {"host": host, "port": port, "user": os.environ.get("MYSQL_USER", "root"),
            "password": os.environ.get("MYSQL_PASSWORD", ""),
            "database": os.environ.get("MYSQL_DATABASE", "test")}
