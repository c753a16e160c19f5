#!/usr/bin/env bash
# Runs freeq's loom models. This is the command CI calls; run it locally
# before changing anything in src/ that sections, drains or locks touch.
#
#   scripts/loom.sh                       # every model, then the downstream crate's
#   scripts/loom.sh -- nested_locks       # models whose name matches
#   LOOM_MAX_PREEMPTIONS=3 scripts/loom.sh  # a deeper (slower) search
#
# `--cfg loom` swaps freeq's atomics and thread-locals for loom's (src/sync.rs).
# It is seen by every crate in the build, which is why it gets a target
# directory of its own: a normal build never has to recompile after it.
# Debug assertions stay on in the release build: freeq's own invariant
# checks (section depth, empty batches) are part of what the models test.
set -euo pipefail

cd "$(dirname "$0")/.."

export RUSTFLAGS="--cfg loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom}"

# freeq's own models.
cargo test --release --test loom_core --test loom_reclaim --test loom_condvar --test loom_profile "$@"

# A crate built on freeq, model-checking its own code: freeq's public locks
# must be loom's under `--cfg loom`. It shares this target directory.
export CARGO_TARGET_DIR="$(cd "$CARGO_TARGET_DIR" && pwd)"
cd tests/downstream-loom
cargo test --release --tests "$@"
