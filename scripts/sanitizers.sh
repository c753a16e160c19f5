#!/usr/bin/env bash
# Runs freeq's library and integration tests under ThreadSanitizer, then
# AddressSanitizer (which also reports leaks), with std rebuilt
# instrumented (-Zbuild-std): nightly only.
#
#   scripts/sanitizers.sh            # both
#   scripts/sanitizers.sh thread     # one of: thread, address
#
# Each sanitizer gets a target directory of its own under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add --toolchain nightly rust-src >/dev/null 2>&1 || true
host=$(rustc -vV | sed -n 's/^host: //p')

for san in "${@:-thread address}"; do
    for s in $san; do
        echo "== -Zsanitizer=$s"
        # An async guard frees one small value in place only once its type
        # is timed under 10 µs; instrumented builds time it above that, and
        # the value leaves the thread instead (the path the other async
        # tests cover). The in-place path runs in the plain suite.
        skip=(--skip one_small_value_frees_in_order_after_the_release)
        # ThreadSanitizer cannot follow a multi-threaded process into a
        # forked child that starts threads ("starting new threads after
        # multi-threaded fork is not supported"); the fork tests whose
        # children start threads run in the plain suite and under
        # AddressSanitizer.
        [ "$s" = thread ] && skip+=(
            --skip a_forked_child_defers_drains_and_quiesces
            --skip a_child_forked_while_quiesce_frees_does_not_hang
            --skip children_forked_while_threads_use_freeq_do_not_hang
            --skip a_forked_child_leaves_the_parents_waiting_batches_to_the_parent
            --skip a_forked_child_never_calls_the_parents_executor
            --skip children_forked_while_threads_profile_start_consistent
        )
        # Under AddressSanitizer, the two fork tests that fork hundreds of
        # children while other threads start and end threads hung in 4 of
        # 20 standalone runs (0 of 45 in the plain build). A hung child,
        # read with gdb: the thread it started waits, as it exits, on the
        # nightly std's `stack_overflow::thread_info::LOCK` (this build's
        # std is rebuilt from nightly sources), inherited locked from a
        # parent thread that was starting or ending a thread at the fork.
        # Not freeq's lock; the tests run in the plain suite.
        [ "$s" = address ] && skip+=(
            --skip children_forked_while_threads_use_freeq_do_not_hang
            --skip children_forked_while_threads_profile_start_consistent
        )
        # The soak (tests/soak/) does not fork under ThreadSanitizer either.
        soak_fork=1
        [ "$s" = thread ] && soak_fork=0
        # LeakSanitizer (with ASan): payloads forgotten on purpose, see
        # scripts/lsan.supp.
        FREEQ_SOAK_FORK=$soak_fork \
        LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}" \
        RUSTFLAGS="-Zsanitizer=$s" \
        RUSTDOCFLAGS="-Zsanitizer=$s" \
        CARGO_TARGET_DIR="target/san-$s" \
            cargo +nightly test -Zbuild-std --target "$host" --lib --tests -- "${skip[@]}"
    done
done
