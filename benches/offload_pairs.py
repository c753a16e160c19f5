#!/usr/bin/env python3
"""Offload against Inline, each window in a fresh process, interleaved.

Runs `heavy_drop -- window offload` and `-- window inline` alternately,
each in a process of its own (a window's latencies depend on the heap the
windows before it left), for every binary given, rotating which goes
first. Prints each pair's Offload / Inline ratios with where Offload's
heavy values were freed, then medians over the pairs that count: those in
which reclaimers freed every heavy value but the last inside Offload's
timed window. The others are shown apart; their tail latency is the
producer not paying for drops nobody made yet, not Offload's.

    python3 benches/offload_pairs.py [--rounds N] NAME=COMMAND [NAME=COMMAND ...]

COMMAND runs the heavy_drop benchmark (a built binary, or `cargo bench
--bench heavy_drop --`); the script appends `window offload|inline`. Set
FREEQ_HEAVY_STRINGS in the environment for the per-allocator runs, e.g.

    cargo bench --bench heavy_drop --no-run
    FREEQ_HEAVY_STRINGS=100000 python3 benches/offload_pairs.py --rounds 5 \\
        glibc="cargo bench -q --bench heavy_drop --"
"""
import shlex
import statistics
import subprocess
import sys


def window(cmd, strategy):
    out = subprocess.run(
        shlex.split(cmd) + ["window", strategy],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("window "):
            fields = dict(f.split("=", 1) for f in line.split()[1:])
            return {
                k: (v if k == "strategy" or k == "counts" else float(v))
                for k, v in fields.items()
            }
    raise SystemExit(f"no window line from {cmd}:\n{out}")


def loadavg():
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def main():
    args = sys.argv[1:]
    rounds = 5
    if args[:1] == ["--rounds"]:
        rounds, args = int(args[1]), args[2:]
    if not args or any("=" not in a for a in args):
        raise SystemExit(__doc__)
    bins = [a.split("=", 1) for a in args]
    pairs = {name: [] for name, _ in bins}
    print(
        f"{'round':<6} {'binary':<12} {'load':>5} {'p50':>7} {'p99.9':>8} {'max':>8} "
        f"{'drop':>7}  heavy values: off the producer in the window / on it in the window / on it after (quiesce) / off it after; "
        "reclaimers ran / waited (ms)"
    )
    for r in range(rounds):
        order = bins[r % len(bins):] + bins[: r % len(bins)]
        for name, cmd in order:
            load = loadavg()
            if r % 2 == 0:
                off, inl = window(cmd, "offload"), window(cmd, "inline")
            else:
                inl, off = window(cmd, "inline"), window(cmd, "offload")
            ratios = (
                off["p50_ns"] / inl["p50_ns"],
                off["p999_ns"] / inl["p999_ns"],
                off["max_ns"] / inl["max_ns"],
                off["drop_ms"] / inl["drop_ms"],
            )
            counts = off["counts"] == "true"
            pairs[name].append((ratios, counts))
            print(
                f"{r + 1:<6} {name:<12} {load:>5} {ratios[0]:>6.2f}x {ratios[1]:>7.3f}x "
                f"{ratios[2]:>7.3f}x {ratios[3]:>6.2f}x  "
                f"{int(off['off_in'])}/{int(off['producer_in'])}/{int(off['producer_after'])}/"
                f"{int(off['off_after'])} of {int(off['heavies'])}; "
                f"{off['reclaim_run_ns'] / 1e6:.0f} / {off['reclaim_wait_ns'] / 1e6:.0f}"
                f"{'' if counts else '  (left out)'}",
                flush=True,
            )
    print()
    print("medians, Offload / Inline (p50, p99.9, max, heavy value's drop time):")
    for name, rows in pairs.items():
        for label, keep in (("counted", True), ("left out", False)):
            sel = [ratios for ratios, c in rows if c == keep]
            if not sel:
                print(f"  {name:<12} {label:<9} none of {len(rows)}")
                continue
            med = [statistics.median(col) for col in zip(*sel)]
            print(
                f"  {name:<12} {label:<9} {len(sel)} of {len(rows)}: p50 {med[0]:.2f}x, "
                f"p99.9 {med[1]:.3f}x, max {med[2]:.3f}x, drop {med[3]:.2f}x"
            )


if __name__ == "__main__":
    main()
