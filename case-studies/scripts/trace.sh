#!/usr/bin/env bash
# Counts the memory system calls a study's configurations make: each
# configuration runs one round under `strace -f -c` (every process and
# thread, start-up and exit included), and the calls that return memory to
# the kernel (brk, madvise, munmap) are printed with the calls that take it
# (mmap, mprotect). With STACKS=1, each madvise/munmap is also attributed to
# the first frame of the study's binary above libc that made it (the
# crate's drop under its lock, or freeq's drain after the unlock).
#
#   bash case-studies/scripts/trace.sh lru --alloc glibc --capacity 32 --clear-every 32 --sizes 64k
#   STACKS=1 bash case-studies/scripts/trace.sh broadcast --alloc glibc --parts 32 --sizes 4k
#
# Run it after `cargo build --release --manifest-path case-studies/Cargo.toml --bins`.
# strace slows every call it stops at, so the latencies the study prints
# under it mean nothing; the counts are what this is for.
set -euo pipefail
cd "$(dirname "$0")/.."
study=${1:?usage: trace.sh STUDY [STUDY OPTIONS...]}
shift
bin=target/release/$study
[ -x "$bin" ] || { echo "trace.sh: $bin is not built" >&2; exit 2; }
command -v strace >/dev/null || { echo "trace.sh: needs strace" >&2; exit 2; }
configs=$("$bin" --help | awk '/^Configurations:/{on=1; next} on && NF==0{exit} on{print $1}')
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for c in $configs; do
    if [ "${STACKS:-0}" = 1 ]; then
        strace -f -qq -k --seccomp-bpf -e trace=madvise,munmap -o "$out/$c" \
            "$bin" --rounds 1 --configs "$c" "$@" >/dev/null
        echo "== $c: madvise/munmap by the first frame of $study above libc"
        awk -v bin="$study(" '
            / (madvise|munmap)\(/ { call = ($0 ~ /madvise\(/) ? "madvise" : "munmap"; pending = 1; next }
            pending && index($0, bin) {
                f = $0; sub(/.*\(/, "", f); sub(/\+0x.*/, "", f)
                n[call " " f]++; pending = 0; next }
            pending && !/^ > / { n[call " (no frame of the binary)"]++; pending = 0 }
            END { for (k in n) printf "%8d  %s\n", n[k], k }' "$out/$c" | sort -rn | head -8
    else
        strace -f -qq --seccomp-bpf -e trace=brk,madvise,munmap,mmap,mprotect -c -o "$out/$c" \
            "$bin" --rounds 1 --configs "$c" "$@" >/dev/null
        printf '%-12s' "$c"
        awk '$NF ~ /^(brk|madvise|munmap|mmap|mprotect)$/ { n[$NF] = $4 }
             END { for (s in n) printf "  %s %s", s, n[s]; print "" }' "$out/$c"
    fi
done
