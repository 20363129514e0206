"""Helpers shared by the benchmark scripts: alternation, statistics, tables, servers, plots.

Every script measures all its alternatives in one invocation, alternating them round by
round (A B C, A B C, ...), so machine noise hits each alike, and prints per alternative the
median over rounds, the min–max spread and the ratio to greenasync.
"""

import asyncio
import math
import os
import platform
import statistics
import sys
import time

from greenasync.testing.redis_server import PrivateRedis, free_port, raise_nofile, reachable

__all__ = [
    "alternate_async", "percentile", "summary", "summary_columns", "report", "machine",
    "free_port", "reachable", "PrivateRedis", "loop_factories", "raise_nofile", "plot",
]


# --- statistics and tables -----------------------------------------------------------------


async def alternate_async(rounds, kinds, measure, failures=None):
    """``{kind: [await measure(kind) for each round]}``, the kinds in turn in every round
    (A B C, A B C, ...). With ``failures`` (a label such as "C=10"), a sample that raises is
    printed with that label and recorded as None (a missing sample) instead of ending the
    run."""
    results = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind in kinds:
            try:
                results[kind].append(await measure(kind))
            except Exception as exc:
                if failures is None:
                    raise
                print(f"  {kind} {failures}: failed: {type(exc).__name__}: {exc}")
                results[kind].append(None)
    return results


def percentile(sorted_values, p):
    """The ``p``-th percentile (0–100) of an already sorted list (nearest rank)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def report(title, results, base, *, unit, scale=1.0, digits=2, higher_is_better=False,
           ratio_label=None):
    """Print one table: per alternative the median, min–max and the ratio to ``base``.

    ``results`` maps an alternative to its samples (one per round; None = did not run).
    The ratio is ``median / base median`` for lower-is-better metrics (times: "how many
    times greenasync's cost"), ``base median / median`` for higher-is-better ones
    (throughput: "how many times faster greenasync is"). Returns the medians.
    """
    medians = {k: statistics.median(v) for k, v in results.items() if v and None not in v}
    base_med = medians.get(base)
    if ratio_label is None:
        ratio_label = f"{base} ÷ this" if higher_is_better else f"× {base}"
    print(f"\n{title}")
    print(f"  {'alternative':28} {'median ' + unit:>14} {'min–max ' + unit:>22} {ratio_label:>18}")
    for kind, samples in results.items():
        if kind not in medians:
            print(f"  {kind:28} {'(did not run)':>14}")
            continue
        med = medians[kind]
        spread = f"{min(samples) * scale:.{digits}f}–{max(samples) * scale:.{digits}f}"
        if base_med is None or med == 0 or base_med == 0:
            ratio = float("nan")
        else:
            ratio = base_med / med if higher_is_better else med / base_med
        print(f"  {kind:28} {med * scale:14.{digits}f} {spread:>22} {ratio:18.2f}")
    return medians


class Column:
    """One metric of :func:`table`: ``key`` in each round's dict, printed ``* scale``.

    ``ratio``: None, "higher" (higher is better: prints base ÷ this) or "lower" (prints
    this ÷ base). ``spread``: also print min–max over rounds.
    """

    def __init__(self, key, label, scale=1.0, digits=1, ratio=None, spread=False, width=9):
        self.key, self.label, self.scale, self.digits = key, label, scale, digits
        self.ratio, self.spread, self.width = ratio, spread, width


def summary(lats, elapsed, cpu, done):
    """One sample's figures: ``lats`` the latency of every operation (seconds, sorted here),
    ``elapsed``/``cpu`` wall and process CPU seconds, ``done`` each worker's count of
    operations (or of operation pairs). Throughput = operations / time until the last worker
    stopped (a worker starved past the deadline lowers it); fair = the least busy worker's
    count ÷ the mean (1: all workers served alike; near 0: some starved)."""
    lats.sort()
    n = len(lats)
    return {"ops_s": n / elapsed, "p50": percentile(lats, 50), "p99": percentile(lats, 99),
            "cpu_op": cpu / n if n else None,
            "fair": min(done) / (sum(done) / len(done)) if sum(done) else None}


def summary_columns(cpu_digits):
    """The table columns for summary()'s figures."""
    return [
        Column("ops_s", "ops/s", digits=0, ratio="higher", spread=True),
        Column("p50", "p50 ms", scale=1e3, digits=2),
        Column("p99", "p99 ms", scale=1e3, digits=2),
        Column("cpu_op", "CPU µs/op", scale=1e6, digits=cpu_digits, ratio="lower"),
        Column("fair", "fair", digits=2, width=5),
    ]


def medians(samples, key):
    """Median over rounds of one metric (rounds that lack it are skipped), or None."""
    values = [s[key] for s in samples if s and s.get(key) is not None]
    return statistics.median(values) if values else None


def table(title, results, base, columns, name_width=26):
    """Print one table: a row per alternative, per column the median over rounds (and
    min–max, and the ratio to the ``base`` alternative where the column asks for it).

    ``results`` maps an alternative to a list of per-round dicts (None: that round failed).
    """
    print(f"\n{title}")
    head = f"  {'alternative':{name_width}}"
    for col in columns:
        head += f" {col.label:>{col.width}}"
        if col.spread:
            head += f" {'(min–max)':>{2 * col.width - 2}}"
        if col.ratio:
            head += f" {('÷' if col.ratio == 'higher' else '×') + 'base':>6}"
    print(head)
    for kind, samples in results.items():
        line = f"  {kind:{name_width}}"
        if not any(samples):
            print(line + " (did not run)")
            continue
        for col in columns:
            med = medians(samples, col.key)
            base_med = medians(results.get(base, []), col.key)
            values = [s[col.key] for s in samples if s and s.get(col.key) is not None]
            cell = "-" if med is None else f"{med * col.scale:.{col.digits}f}"
            line += f" {cell:>{col.width}}"
            if col.spread:
                lo, hi = (min(values) * col.scale, max(values) * col.scale) if values else (0, 0)
                sp = f"({lo:.{col.digits}f}–{hi:.{col.digits}f})" if values else ""
                line += f" {sp:>{2 * col.width - 2}}"
            if col.ratio:
                if med and base_med:
                    r = base_med / med if col.ratio == "higher" else med / base_med
                    line += f" {r:6.2f}"
                else:
                    line += f" {'-':>6}"
        if None in samples:
            line += f"  [{samples.count(None)} of {len(samples)} rounds failed]"
        print(line)


def paired_ratio(results, a, b, key):
    """``a ÷ b`` of one metric: (ratio of the medians, min and max of the per-round ratios).

    Rounds alternate, so round i of ``a`` and of ``b`` ran back to back: their ratio cancels
    slow drift of the machine."""
    ma, mb = medians(results.get(a, []), key), medians(results.get(b, []), key)
    if not ma or not mb:
        return None
    per_round = [x[key] / y[key] for x, y in zip(results[a], results[b])
                 if x and y and x.get(key) and y.get(key)]
    return ma / mb, min(per_round, default=float("nan")), max(per_round, default=float("nan"))


def goal(label, value, op, target):
    """Print one goal line: ``label: 1.34 (rounds 1.20–1.41), goal ≥ 1.3: met``."""
    if value is None:
        print(f"  {label}: not measured")
        return None
    ratio, lo, hi = value
    ok = ratio >= target if op == ">=" else ratio <= target
    sign = "≥" if op == ">=" else "≤"
    print(f"  {label}: {ratio:.2f} (per round {lo:.2f}–{hi:.2f}), goal {sign} {target}: "
          f"{'met' if ok else 'NOT met'}")
    return ok


def machine():
    """One line naming the machine, the interpreter and the load (for the README)."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, load average {load}")


def versions(*names):
    """'name x.y.z' for each installed distribution among ``names``."""
    from importlib import metadata

    out = []
    for name in names:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


# --- loops, limits -------------------------------------------------------------------------


def loop_factories(names):
    """``[(name, factory)]`` for the requested event loops that are installed."""
    out = []
    for name in names:
        if name == "asyncio":
            out.append((name, asyncio.new_event_loop))
        elif name == "uvloop":
            try:
                import uvloop
            except ImportError:
                print("uvloop is not installed: skipped")
                continue
            out.append((name, uvloop.new_event_loop))
        else:
            raise SystemExit(f"unknown loop {name!r} (asyncio, uvloop)")
    return out


def cpu_seconds():
    """CPU time (user + system) of this process, all threads."""
    return time.process_time()


# --- servers -------------------------------------------------------------------------------


# --- plots ---------------------------------------------------------------------------------


def plot(path, title, panels):
    """Throughput and p99 against concurrency, one row per configuration.

    ``panels`` is ``[(config_name, {alternative: {concurrency: (ops_per_s, p99_s)}})]``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(panels)
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.4 * rows), squeeze=False)
    for row, (config, series) in enumerate(panels):
        ax_t, ax_p = axes[row]
        for alt, points in series.items():
            cs = sorted(points)
            style = dict(marker="o", linewidth=2.2 if alt.startswith("greenasync") else 1.2)
            ax_t.plot(cs, [points[c][0] for c in cs], label=alt, **style)
            ax_p.plot(cs, [points[c][1] * 1e3 for c in cs], label=alt, **style)
        for ax, what in ((ax_t, "throughput (ops/s)"), (ax_p, "p99 latency (ms)")):
            ax.set_xscale("log")
            ax.set_xlabel("concurrency")
            ax.set_ylabel(what)
            ax.set_title(f"{config}: {what}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        ax_p.set_yscale("log")
        ax_t.set_yscale("log")
        ax_t.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"\nplot written to {path}")


def python():
    """The interpreter running this script (for helper subprocesses)."""
    return sys.executable
