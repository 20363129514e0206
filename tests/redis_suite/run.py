#!/usr/bin/env python
"""Run redis-py's own sync test suite twice, plain and with every test body in a greenasync
greenlet, against identical private redis-servers, and compare the outcomes test by test.

    python tests/redis_suite/run.py            # the CI files (commands, pipeline, pubsub,
                                               # lock, connection pool)
    python tests/redis_suite/run.py --all      # redis-py's whole tests/ directory
    python tests/redis_suite/run.py test_lock.py -- -k blocking   # some files; after --,
                                               # arguments for both pytest runs

The tests come from the sdist of the *installed* redis version, fetched with pip into a
cache outside the repository (``$GREENASYNC_REDIS_SUITE_CACHE``, else
``$XDG_CACHE_HOME/greenasync/redis-suite``, else ``~/.cache/greenasync/redis-suite``); only
its ``tests/`` and ``pyproject.toml`` (the suite's pytest configuration) are extracted, so
the suite imports the installed redis package. Each mode gets its own fresh
``redis-server --save '' --appendonly no --enable-debug-command yes --enable-module-command
yes`` on a free loopback port, as both ``--redis-url`` and ``--redis-mod-url`` (the suite
flushes its servers and changes their configuration: a mode must not see the other's
leftovers, and the two modes run in parallel unless ``--sequential``).

Exit status: 0 when the two runs differ exactly by the documented differences in
``EXPECTED_DIFFERENCES`` (those of the tests that ran), 1 otherwise, 2 when a run could not
be made (no sdist, no redis-server, pytest crashed). See README.md.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

CI_FILES = ("test_commands.py", "test_pipeline.py", "test_pubsub.py", "test_lock.py",
            "test_connection_pool.py")

# Tests whose outcome differs between the plain and the green run for a known reason that is
# not a greenasync bug: node id -> (plain outcome, green outcome, cause). Mirrored in the
# README's table. A difference not listed here, or a listed one that did not happen (among
# the files that ran), fails the comparison. None is in the CI files; all were seen with
# redis-py 8.1.0 against redis-server 7.0.15, network isolated (see README.md).
NESTED_LOOP = ("the test body runs its own event loop (asyncio.run() or asyncio.Runner) for "
               "redis.asyncio code; inside a greenlet the session's loop is already running "
               "in this thread, and asyncio refuses to nest loops: RuntimeError")
STDLIB_MOCK = ("the test mocks or type-checks a stdlib object (socket.socket, "
               "socket.socket.sendall, ssl.create_default_context, type(threading.RLock())) "
               "that the patched redis package no longer uses: it holds greenasync's hybrid "
               "shim instead (a process-wide effect of greenasync.patch('redis'), even for "
               "the async test)")
LOOP_BLOCKED = ("redis.auth.token_manager.TokenManager.start() finds a running loop "
                "(asyncio.get_running_loop() inside the greenlet returns the session's loop) "
                "and schedules the token renewals on it instead of on its own loop thread; "
                "the test body then waits in the test module's own, unpatched time.sleep, "
                "which blocks that loop, so no renewal happens during the test (they pass "
                "with --patch-tests, where that sleep parks)")
_HIMPORT = "tests/test_himport.py::"
EXPECTED_DIFFERENCES = {
    **{_HIMPORT + name: ("passed", "failed", NESTED_LOOP) for name in (
        "TestHImportAskRedirectAsyncCluster::test_bare_set_asking_error_drains_set_reply",
        "TestHImportAskRedirectAsyncCluster::test_bare_set_packs_asking_then_set",
        ("TestHImportAskRedirectAsyncCluster::"
         "test_bare_set_recovers_with_asking_on_missing_fieldset"),
        "TestHImportAskRedirectAsyncCluster::test_bare_set_recovery_without_asking_keeps_bundle",
        "TestHImportAskRedirectAsyncCluster::test_prepare_and_set_packs_prepare_asking_set",
        "TestHImportAskRedirectAsyncCluster::test_prepare_and_set_without_asking_keeps_bundle",
        "TestHImportBatchedReadDrain::test_async_prepare_pipeline_drains_all_replies_on_error",
        "TestHImportBatchedReadDrain::test_async_reconcile_discards_drains_all_replies_on_error",
        "TestHImportClusterWiring::test_async_cluster_pipeline_delegates_to_parent_registry",
        "TestHImportPropagationAsync::test_async_pool_and_client",
        ("TestHImportReconcileRevisionStamp::"
         "test_async_cluster_reconcile_does_not_overstamp_on_concurrent_discard"),
        ("TestHImportReconcileRevisionStamp::"
         "test_async_reconcile_does_not_overstamp_on_concurrent_discard"),
        "TestHImportSetRawArityFallThrough::test_async_too_few_args_falls_through_to_send",
        "TestHImportSetRawArityFallThrough::test_async_well_formed_uses_himport_executor",
        "TestHImportSetValueValidation::test_async_rejects_string_like_values[abc]",
        "TestHImportSetValueValidation::test_async_rejects_string_like_values[bad2]",
        "TestHImportSetValueValidation::test_async_rejects_string_like_values[bad3]",
        "TestHImportSetValueValidation::test_async_rejects_string_like_values[x]",
        ("TestHImportSingleConnectionPrepareMaterializesFields::"
         "test_async_generator_fields_reach_wire_prepare"),
    )},
    "tests/test_multidb/test_client.py::TestMultiDbClient::test_add_new_health_check"
    "[mock_multi_db_config0-mock_db0-mock_db10-mock_db20]": ("passed", "failed", NESTED_LOOP),
    "tests/maint_notifications/test_maint_notifications.py::TestMaintNotificationsPoolHandler"
    "::test_init": ("passed", "failed", STDLIB_MOCK),
    "tests/maint_notifications/test_maint_notifications_handling.py::"
    "TestMaintenanceNotificationsHandshake::test_handshake_failure_when_enabled":
        ("passed", "failed", STDLIB_MOCK),
    "tests/test_asyncio/test_ssl.py::TestSSL::test_ssl_flags_applied_to_context":
        ("passed", "failed", STDLIB_MOCK),
    "tests/test_auth/test_token_manager.py::TestTokenManager::"
    "test_token_renewal_with_skip_initial": ("passed", "failed", LOOP_BLOCKED),
    **{"tests/test_credentials.py::TestStreamingCredentialProvider::" + name:
       ("passed", "failed", LOOP_BLOCKED) for name in (
        "test_do_not_re_auth_pub_sub_in_resp2[credential_provider0]",
        "test_re_auth_all_connections[credential_provider0]",
        "test_re_auth_partial_connections[credential_provider0]",
        "test_re_auth_pub_sub_in_resp3[credential_provider0]",
    )},
}

# What the whole suite (--all) imports beyond the test extra: import name -> pip name. Not
# in setup.cfg: pytest-asyncio is a pytest plugin that would load into the project's own
# test runs too; install these in a separate venv (README.md).
ALL_SUITE_PACKAGES = {
    "pytest_asyncio": "pytest-asyncio", "numpy": "numpy", "ujson": "ujson",
    "xxhash": "xxhash", "pybreaker": "pybreaker", "aiohttp": "aiohttp",
    "redis_entraid": "redis-entraid", "cryptography": "cryptography", "OpenSSL": "pyopenssl",
    "async_timeout": "async-timeout", "jwt": "PyJWT", "opentelemetry.sdk": "opentelemetry-sdk",
    "opentelemetry.exporter.otlp.proto.http": "opentelemetry-exporter-otlp-proto-http",
}

# Added to PrivateRedis's `--bind 127.0.0.1 --port <free> --save "" --appendonly no`: the
# suite's DEBUG tests need the first; MODULE LOAD of a missing file (test_module*) the second.
SERVER_ARGS = ("--enable-debug-command", "yes", "--enable-module-command", "yes")

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


def die(message):
    """Stop with exit status 2: a run could not be made (as opposed to runs that differ)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _importable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def cache_dir():
    env = os.environ.get("GREENASYNC_REDIS_SUITE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "greenasync" / "redis-suite"


def fetch_suite(cache, version, quiet=True):
    """The extracted ``redis-<version>`` directory (tests/ and pyproject.toml) in ``cache``,
    downloading the sdist with pip the first time."""
    target = cache / f"redis-{version}"
    if (target / "tests" / "conftest.py").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"redis=={version}", "-d", tmp]
        if quiet:
            cmd.append("-q")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              check=False)
        sdists = list(Path(tmp).glob("redis-*.tar.gz"))
        if proc.returncode or not sdists:
            die(f"run.py: could not fetch the redis=={version} sdist with pip:\n"
                f"{' '.join(cmd)}\n{proc.stdout}")
        prefix = f"redis-{version}/"
        wanted = (prefix + "tests/", prefix + "pyproject.toml")
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(wanted[0]) or m.name == wanted[1]]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # Python < 3.11.4: names were checked by the prefix test above
                tar.extractall(tmp, members=members)
        try:
            os.rename(Path(tmp) / f"redis-{version}", target)
        except OSError:
            if not (target / "tests" / "conftest.py").is_file():  # not a concurrent fetch
                raise
    return target


_NETNS_ENV = "GREENASYNC_REDIS_SUITE_NETNS"


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def netns_prefix():
    """The command prefix that runs a command in a new network namespace, or None."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return None
    for prefix in (["unshare", "--net"], ["unshare", "--net", "--map-root-user"]):
        probe = subprocess.run(prefix + ["ip", "link", "set", "lo", "up"], check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if probe.returncode == 0:
            return prefix
    return None


def run_isolated(prefix, argv):
    """Run this script again inside a new network namespace; return its exit status.

    Inside, only a loopback interface exists: the private redis-servers and both pytest runs
    live there, and a test that connects to localhost:6379 (several do, with mocks that the
    green run bypasses) or to a public address is refused at once.
    """
    env = dict(os.environ, **{_NETNS_ENV: "1"})
    proc = subprocess.Popen(prefix + [sys.executable, str(Path(__file__).resolve()), *argv],
                            env=env)
    try:
        return proc.wait()
    except BaseException:
        # ^C reaches the inner runner too (same process group), which stops its servers;
        # otherwise (killed by a test timeout) ask it to stop, then insist.
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise


def start_server():
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from servers import PrivateRedis
    finally:
        sys.path.pop(0)
    if not shutil.which("redis-server"):
        die("run.py: redis-server is not installed (needed for a private Redis)")
    return PrivateRedis(*SERVER_ARGS)


def server_version():
    out = subprocess.run(["redis-server", "--version"], stdout=subprocess.PIPE, text=True,
                         check=False).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip()


class Run:
    """One pytest run of the suite in a subprocess, against its own private server."""

    def __init__(self, mode, suite, files, pytest_args, workdir, plugin_args=()):
        self.mode = mode
        self.results = workdir / f"{mode}.json"
        self.log = workdir / f"{mode}.log"
        self.server = start_server()
        cmd = [sys.executable, "-m", "pytest", "-c", "pyproject.toml", "--rootdir", ".",
               "-p", "no:cacheprovider", "-p", "greenlet_plugin",
               f"--greenasync-results={self.results}", f"--redis-url={self.server.url}",
               # The module tests' server too (default localhost:6479, which they flush).
               f"--redis-mod-url={self.server.url}",
               # Native tracebacks: pytest's own format parses the source of every frame
               # (test_cluster.py is 5,000 lines), which made failing tests slow to report.
               *plugin_args, "-q", "-rfE", "--tb=native", *files, *pytest_args]
        if mode == "green":
            cmd.insert(cmd.index("-q"), "--greenasync-green")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HERE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.pop("PYTEST_ADDOPTS", None)
        self.cmd = cmd
        self.started = time.monotonic()
        self.seconds = None
        try:
            with open(self.log, "w") as log:
                self.proc = subprocess.Popen(cmd, cwd=suite, env=env, stdout=log,
                                             stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        except BaseException:
            self.server.stop()
            raise

    def wait(self, timeout):
        try:
            self.proc.wait(max(1, timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            self.seconds = time.monotonic() - self.started
            self.server.stop()
        return self

    def outcomes(self):
        # pytest exit codes: 0 all passed, 1 some failed, 5 nothing collected; others mean
        # the run itself broke (interrupted, internal error, usage error).
        if self.proc.returncode not in (0, 1, 5) or not self.results.is_file():
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.is_file() else ""
            die(f"run.py: the {self.mode} run failed (exit {self.proc.returncode})"
                f"; log {self.log}:\n{tail}")
        return json.loads(self.results.read_text())


def per_file(tests):
    table = {}
    for nodeid, result in tests.items():
        row = table.setdefault(nodeid.split("::")[0], dict.fromkeys(OUTCOMES, 0))
        row[result["outcome"]] += 1
    return table


def compare(plain, green):
    diffs = {}
    for nodeid in sorted(set(plain) | set(green)):
        a = plain.get(nodeid, {}).get("outcome", "absent")
        b = green.get(nodeid, {}).get("outcome", "absent")
        if a != b:
            diffs[nodeid] = (a, b)
    return diffs


def expected_for(ran, patch_tests=False):
    """The documented differences among the tests that ran (``ran``: node ids); with
    ``--patch-tests`` the test bodies' sleeps park, so LOOP_BLOCKED does not apply."""
    return {k: v for k, v in EXPECTED_DIFFERENCES.items()
            if k in ran and not (patch_tests and v[2] is LOOP_BLOCKED)}


def fmt_row(row):
    return " ".join(f"{row[o]:>4}" for o in OUTCOMES)


def report(plain_doc, green_doc, runs, patch_tests=False, out=sys.stdout):
    plain, green = plain_doc["tests"], green_doc["tests"]
    p_table, g_table = per_file(plain), per_file(green)
    p_secs, g_secs = plain_doc.get("file_seconds", {}), green_doc.get("file_seconds", {})
    head = " ".join(f"{o[:4]:>4}" for o in OUTCOMES) + "     s"
    print(f"\n{'':<56} {'plain':^35} | {'green':^35}", file=out)
    print(f"{'file':<56} {head} | {head}", file=out)
    total_p, total_g = dict.fromkeys(OUTCOMES, 0), dict.fromkeys(OUTCOMES, 0)
    empty = dict.fromkeys(OUTCOMES, 0)
    for name in sorted(set(p_table) | set(g_table)):
        p, g = p_table.get(name, empty), g_table.get(name, empty)
        for o in OUTCOMES:
            total_p[o] += p[o]
            total_g[o] += g[o]
        print(f"{name:<56} {fmt_row(p)} {p_secs.get(name, 0):5.1f} | "
              f"{fmt_row(g)} {g_secs.get(name, 0):5.1f}", file=out)
    print(f"{'total':<56} {fmt_row(total_p)} {sum(p_secs.values()):5.1f} | "
          f"{fmt_row(total_g)} {sum(g_secs.values()):5.1f}", file=out)
    print(f"wall time: plain {runs['plain'].seconds:.1f} s, green {runs['green'].seconds:.1f} s"
          f" (pytest's own: {plain_doc['seconds']} s, {green_doc['seconds']} s)", file=out)
    stats = green_doc.get("greenasync") or {}
    print(f"green run: {stats.get('calls', 0)} test bodies in greenlets, "
          f"{stats.get('spawned', 0)} worker greenlets spawned, parks by kind "
          f"{stats.get('parks_by_kind', {})}", file=out)

    diffs = compare(plain, green)
    expected = expected_for(set(plain) | set(green), patch_tests)
    unexpected = {k: v for k, v in diffs.items()
                  if k not in expected or tuple(expected[k][:2]) != v}
    missing = {k: v for k, v in expected.items() if k not in diffs}
    if diffs:
        print(f"\ndifferences (plain -> green): {len(diffs)}", file=out)
        for nodeid, (a, b) in diffs.items():
            known = expected.get(nodeid)
            tag = "documented" if known and tuple(known[:2]) == (a, b) else "UNEXPECTED"
            print(f"  [{tag}] {nodeid}: {a} -> {b}", file=out)
            for mode, doc in (("plain", plain), ("green", green)):
                msg = doc.get(nodeid, {}).get("message")
                if msg:
                    print(f"      {mode}: {msg}", file=out)
            if known:
                print(f"      cause: {known[2]}", file=out)
    else:
        print("\ndifferences (plain -> green): none", file=out)
    for nodeid, (a, b, cause) in missing.items():
        print(f"  [documented, DID NOT HAPPEN] {nodeid}: {a} -> {b} ({cause})", file=out)
    ok = not unexpected and not missing and stats.get("calls", 0) > 0
    if stats.get("calls", 0) == 0:
        print("the green run ran no test body in a greenlet: plugin not active?", file=out)
    return ok, {
        "ok": ok,
        "files": sorted(set(p_table) | set(g_table)),
        "plain": {"per_file": p_table, "total": total_p, "seconds": runs["plain"].seconds,
                  "file_seconds": p_secs},
        "green": {"per_file": g_table, "total": total_g, "seconds": runs["green"].seconds,
                  "file_seconds": g_secs, "greenasync": stats},
        "differences": {k: list(v) for k, v in diffs.items()},
        "unexpected": {k: list(v) for k, v in unexpected.items()},
        "documented_but_missing": {k: list(v[:2]) for k, v in missing.items()},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help=f"test files of the suite (default: "
                        f"{' '.join(CI_FILES)})")
    parser.add_argument("--all", action="store_true", help="the whole tests/ directory")
    parser.add_argument("--sequential", action="store_true",
                        help="run the two modes one after the other (default: in parallel)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds allowed per run (default 1800)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="keep the suite's tracemalloc fixture (default: made a no-op in "
                             "both runs: it only adds allocation tracebacks to ResourceWarning "
                             "reports, and doubles the CPU time, or worse with failures)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="event loop of the green run (default asyncio)")
    parser.add_argument("--loop-scope", choices=("session", "test"), default="session",
                        help="green run: one event loop for the whole run (default) or a "
                             "fresh one per test")
    parser.add_argument("--patch-tests", action="store_true",
                        help="green run: patch the suite's own modules too (their sleeps, "
                             "threading and queue waits then park as well)")
    parser.add_argument("--json", metavar="PATH", help="write the comparison to PATH as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the logs and per-test JSON of both runs (their directory "
                             "is printed)")
    parser.add_argument("--isolate-network", choices=("auto", "yes", "no"), default="auto",
                        help="run both modes in a private network namespace with only a "
                             "loopback interface (unshare --net), so that no test reaches a "
                             "server of this machine (the shared Redis on 6379) or the "
                             "network; auto: when unshare works here (default)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the sdist is extracted (default: see the module doc)")
    argv = sys.argv[1:] if argv is None else list(argv)
    original_argv = list(argv)
    # SIGTERM (a killed CI job, a test timeout) unwinds like ^C: the pytest runs and the
    # private servers are stopped on the way out.
    signal.signal(signal.SIGTERM, _terminate)
    pytest_args = []
    if "--" in argv:  # what follows goes to both pytest runs as is
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if args.all and args.files:
        parser.error("--all runs every file; give either --all or files")

    if args.all:
        missing = [pip for mod, pip in ALL_SUITE_PACKAGES.items() if not _importable(mod)]
        if missing:
            die("run.py: the whole suite needs these packages as well (in a venv of its own, "
                f"see README.md):\n  pip install {' '.join(missing)}")
    version = importlib.metadata.version("redis")
    suite = fetch_suite(args.cache_dir or cache_dir(), version)  # needs the network: first
    isolated = os.environ.get(_NETNS_ENV) == "1"
    if isolated:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    elif args.isolate_network != "no":
        prefix = netns_prefix()
        if prefix:
            return run_isolated(prefix, original_argv)
        if args.isolate_network == "yes":
            die("run.py: cannot make a network namespace here (unshare --net "
                             "and ip are needed, as root or with user namespaces)")
    if args.all:
        targets = ["tests"]
    else:
        targets = [f if f.startswith("tests/") else f"tests/{f}"
                   for f in (args.files or CI_FILES)]
    print(f"redis-py {version} test suite ({suite}), redis-server {server_version()}, "
          f"Python {sys.version.split()[0]}, green loop {args.loop} per {args.loop_scope}"
          f"{', suite modules patched too' if args.patch_tests else ''}"
          f"{', with tracemalloc' if args.tracemalloc else ''}"
          f"{', network isolated (loopback only)' if isolated else ', NOT network isolated'}; "
          f"{' '.join(targets)} {' '.join(pytest_args)}")

    workdir = Path(tempfile.mkdtemp(prefix="greenasync-redis-suite-"))
    runs = {}
    plugin_args = {"plain": [], "green": [f"--greenasync-loop={args.loop}",
                                          f"--greenasync-loop-scope={args.loop_scope}"]}
    if args.patch_tests:
        plugin_args["green"].append("--greenasync-patch-tests")
    if not args.tracemalloc:
        for extra in plugin_args.values():
            extra.append("--greenasync-no-tracemalloc")
    try:
        if args.sequential:
            for mode in ("plain", "green"):
                runs[mode] = Run(mode, suite, targets, pytest_args, workdir,
                                 plugin_args[mode]).wait(args.timeout)
        else:
            for mode in ("plain", "green"):
                runs[mode] = Run(mode, suite, targets, pytest_args, workdir, plugin_args[mode])
            for run in runs.values():
                run.wait(args.timeout)
        docs = {mode: run.outcomes() for mode, run in runs.items()}
        ok, summary = report(docs["plain"], docs["green"], runs, args.patch_tests)
    except BaseException:
        for run in runs.values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
            run.server.stop()
        args.keep = True
        raise
    finally:
        if args.keep:
            print(f"logs and results: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summary.update(redis_py=version, redis_server=server_version(), targets=targets,
                   loop=args.loop, loop_scope=args.loop_scope, patch_tests=args.patch_tests,
                   network_isolated=isolated,
                   tracemalloc=args.tracemalloc)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, sort_keys=True))
    print("\nOK: the two runs agree (up to the documented differences)" if ok else
          "\nFAIL: the runs differ beyond the documented differences (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
