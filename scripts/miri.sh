#!/usr/bin/env bash
# Runs freeq's library and integration tests under Miri.
#
# Pass 1, Stacked Borrows (Miri's default): everything. Tests that pin a
# crossbeam-epoch guard are ignored there: crossbeam-epoch's intrusive list
# is not Stacked Borrows clean (crossbeam-rs/crossbeam#545), which
# crossbeam itself handles by testing under Tree Borrows.
# Tests that start freeq's reclaimer threads (which live as long as the
# process, so Miri calls them leaked) are ignored there too.
# Pass 2, Tree Borrows with leaks of those threads allowed: the files that
# hold the ignored tests, everything in them included (failure_paths: retire
# during thread exit with a pinned reader, a retired value that panics).
# Pass 1 covers the allocator that re-enters freeq (tests/alloc_reentry.rs).
# Pass 3, the library's unit tests on a 32-bit target (i686) and a
# big-endian one (s390x), which Miri interprets on this machine. Miri never
# links C, but a dev-dependency's build script (criterion's `alloca`) still
# compiles a C file for the target: the host's gcc, without cc's
# target-specific flags (which would want the target's C headers), gets
# it through.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1 || true

cargo +nightly miri test --lib --tests "$@"
# The async locks (feature tokio); their epoch test runs in pass 2.
cargo +nightly miri test --features tokio --test tokio --test profile_async "$@"
MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-tree-borrows -Zmiri-ignore-leaks" \
    cargo +nightly miri test --test reclaim --test stats --test failure_paths --test offload_rule --test profile "$@" -- --include-ignored
MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-tree-borrows -Zmiri-ignore-leaks" \
    cargo +nightly miri test --features tokio --test tokio "$@" -- --include-ignored epoch costly_bin
for target in i686-unknown-linux-gnu s390x-unknown-linux-gnu; do
    t=${target//-/_}
    env "CC_$t=gcc" "AR_$t=ar" CRATE_CC_NO_DEFAULTS=1 \
        cargo +nightly miri test --lib --target "$target" "$@"
done
