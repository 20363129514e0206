"""Re-plot a saved run of bench_redis.py or bench_mongo.py (their --json output) without
measuring again: throughput and p99 latency against concurrency, one row per configuration
(loop and parser, or loop and operation), one line per alternative, medians over rounds.

    python benchmarks/plot.py redis.json benchmarks/redis.png [--title "..."]
"""

import argparse
import json

from _common import medians, plot


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json")
    p.add_argument("png")
    p.add_argument("--title", default="throughput and p99 against concurrency")
    args = p.parse_args()
    with open(args.json) as f:
        entries = json.load(f)
    panels = {}
    for entry in entries:
        config = ", ".join(str(v) for k, v in entry.items() if k not in ("results", "concurrency"))
        series = panels.setdefault(config, {})
        for alt, samples in entry["results"].items():
            tp = medians(samples, "ops_s")
            if tp is not None:
                series.setdefault(alt, {})[entry["concurrency"]] = (tp, medians(samples, "p99"))
    plot(args.png, args.title, list(panels.items()))


if __name__ == "__main__":
    main()
