#!/usr/bin/env bash
# Runs the soak (tests/soak/) for a given time, optionally under a
# sanitizer, and prints its figures.
#
#   scripts/soak.sh 60            # one minute, plain (debug build, debug assertions on)
#   scripts/soak.sh 30 thread     # ThreadSanitizer (nightly; no fork: TSan cannot follow it)
#   scripts/soak.sh 30 address    # AddressSanitizer with LeakSanitizer (nightly)
#
# FREEQ_SOAK_THREADS (workers, default 4) and FREEQ_SOAK_SEED pass
# through. The sanitizer builds share scripts/sanitizers.sh's target
# directories and flags, so one built there is reused here.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:?usage: scripts/soak.sh SECONDS [thread|address]}
san=${2:-}
export FREEQ_SOAK_SECS="$secs"
# The seed is chosen here (unless given), so that a failing run, even one
# that hangs before the soak prints anything, names it for a replay. The
# same seed replays the same choices of actions; the threads' interleaving
# differs from run to run.
if [ -z "${FREEQ_SOAK_SEED:-}" ]; then
    FREEQ_SOAK_SEED=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
fi
export FREEQ_SOAK_SEED
trap 'rc=$?; [ "$rc" -eq 0 ] || echo "scripts/soak.sh: FAILED with seed $FREEQ_SOAK_SEED; replay: FREEQ_SOAK_SEED=$FREEQ_SOAK_SEED bash scripts/soak.sh $secs${san:+ $san}" >&2' EXIT

case "$san" in
"")
    cargo test --test soak -- --exact soak --nocapture
    ;;
thread | address)
    host=$(rustc -vV | sed -n 's/^host: //p')
    # ThreadSanitizer cannot follow a multi-threaded process into a forked
    # child that starts threads: the soak does not fork under it.
    fork=1
    [ "$san" = thread ] && fork=0
    FREEQ_SOAK_FORK=$fork \
    LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}" \
    RUSTFLAGS="-Zsanitizer=$san" \
    RUSTDOCFLAGS="-Zsanitizer=$san" \
    CARGO_TARGET_DIR="target/san-$san" \
        cargo +nightly test -Zbuild-std --target "$host" --test soak -- --exact soak --nocapture
    ;;
*)
    echo "scripts/soak.sh: unknown sanitizer '$san' (thread or address)" >&2
    exit 2
    ;;
esac
