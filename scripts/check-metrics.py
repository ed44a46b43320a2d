#!/usr/bin/env python3
"""Check a /metrics endpoint the way Prometheus reads it, with prometheus_client's own parsers.

Usage: check-metrics.py URL [--require NAME]...

The Content-Type must name the format served (OpenMetrics or the Prometheus text format) and
the body must parse with that format's parser; counters are exposed as NAME_total; every
--require'd family must be present. Prints one line per family (type and sample count) and
exits 1 with the reason on the first failure.
"""

import argparse
import sys
import urllib.request

from prometheus_client.openmetrics import parser as openmetrics
from prometheus_client import parser as prometheus


def fail(why):
    print(f"check-metrics: {why}", file=sys.stderr)
    sys.exit(1)


def main():
    args = argparse.ArgumentParser()
    args.add_argument("url")
    args.add_argument("--require", action="append", default=[])
    opts = args.parse_args()
    with urllib.request.urlopen(opts.url, timeout=10) as r:
        content_type = r.headers.get("Content-Type", "")
        body = r.read().decode("utf-8")
    if content_type.startswith("application/openmetrics-text"):
        if "version=1.0.0" not in content_type:
            fail(f"OpenMetrics without version=1.0.0: {content_type!r}")
        parse = openmetrics.text_string_to_metric_families
        if not body.endswith("# EOF\n"):
            fail("OpenMetrics text must end with '# EOF'")
    elif content_type.startswith("text/plain") and "version=0.0.4" in content_type:
        parse = prometheus.text_string_to_metric_families
    else:
        fail(f"Content-Type {content_type!r} names no Prometheus exposition format")
    try:
        families = list(parse(body))
    except Exception as e:  # the parser's own error says where
        fail(f"does not parse as {content_type}: {e}")
    seen = {}
    for f in families:
        seen[f.name] = f
        for s in f.samples:
            if f.type == "counter" and not (
                s.name.endswith("_total") or s.name.endswith("_created")
            ):
                fail(f"counter {f.name}: sample {s.name} does not end in _total")
            if f.type == "gauge" and s.name.endswith("_total"):
                fail(f"gauge {f.name}: sample {s.name} ends in _total (a counter's suffix)")
        print(f"{f.name} {f.type} {len(f.samples)}")
    for name in opts.require:
        if name not in seen:
            fail(f"family {name} is missing")


if __name__ == "__main__":
    main()
