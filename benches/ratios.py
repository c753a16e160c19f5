#!/usr/bin/env python3
"""Ratio tables from criterion's saved results (target/criterion).

For every benchmark group, prints each function's time per iteration
(median estimate, and the fastest sample, which shared machines disturb
least) and its ratio to the group's baseline at the same parameter.

    python3 benches/ratios.py [target/criterion]
"""
import json
import os
import sys

BASELINES = {  # group prefix -> baseline function
    "enqueue": "Vec::push",
    "drain": "Vec push+clear",
    "hold_time": "hand-written",
    "contention": "hand-written",
    "profile": "off",
}


def load(root):
    rows = {}
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "benchmark.json" not in files:
            continue
        bench = json.load(open(os.path.join(dirpath, "benchmark.json")))
        est = json.load(open(os.path.join(dirpath, "estimates.json")))
        sample = json.load(open(os.path.join(dirpath, "sample.json")))
        fastest = min(t / i for t, i in zip(sample["times"], sample["iters"]))
        key = (bench["group_id"], bench.get("value_str") or "")
        rows.setdefault(key, {})[bench["function_id"]] = (est["median"]["point_estimate"], fastest)
    return rows


def fmt(ns):
    for unit, scale in (("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.2f} ns"


def main():
    rows = load(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
    for (group, param), funcs in sorted(rows.items()):
        base_name = next((b for g, b in BASELINES.items() if group.startswith(g)), None)
        base = funcs.get(base_name)
        print(f"\n{group} {param}  (baseline: {base_name})")
        print("| function | median | fastest sample | ratio (median) | ratio (fastest) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, (median, fastest) in sorted(funcs.items(), key=lambda kv: kv[1][0]):
            r1 = f"{median / base[0]:.2f}x" if base else "-"
            r2 = f"{fastest / base[1]:.2f}x" if base else "-"
            print(f"| {name} | {fmt(median)} | {fmt(fastest)} | {r1} | {r2} |")


if __name__ == "__main__":
    main()
