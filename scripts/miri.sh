#!/usr/bin/env bash
# Runs freeq's library and integration tests under Miri.
#
# Pass 1, Stacked Borrows (Miri's default): everything. Tests that pin a
# crossbeam-epoch guard are ignored there: crossbeam-epoch's intrusive list
# is not Stacked Borrows clean (crossbeam-rs/crossbeam#545), which
# crossbeam itself handles by testing under Tree Borrows.
# Pass 2, Tree Borrows: those epoch tests (and the rest of their files).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1 || true

cargo +nightly miri test --lib --tests "$@"
MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-tree-borrows" \
    cargo +nightly miri test --test reclaim --test stats "$@" -- --include-ignored
