#!/usr/bin/env bash
# Runs tests/threadless.rs on wasm32-wasip1, a target without threads, under
# Node's WASI: sections, locks, Deferred, FreeQueue, retire, and
# Policy::Offload freeing inline. The test is built as a crate of its own
# (tests/threadless-wasm) so that freeq's dev-dependencies stay out. Where
# Node or the target is missing, says so and skips.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1; then
    echo "wasm: SKIPPED: no node here to run wasm32-wasip1 tests"
    exit 0
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 &&
    ! rustup target add wasm32-wasip1 >/dev/null 2>&1; then
    echo "wasm: SKIPPED: the wasm32-wasip1 target cannot be installed here"
    exit 0
fi
target_dir="${CARGO_TARGET_DIR:-target}/cross"
case "$target_dir" in
/*) ;;
*) target_dir="$(pwd)/$target_dir" ;;
esac
cd tests/threadless-wasm
for features in "" "--no-default-features"; do
    # shellcheck disable=SC2086
    wasm=$(CARGO_TARGET_DIR="$target_dir" cargo test --target wasm32-wasip1 --test threadless \
        $features --no-run --message-format=json --quiet |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "threadless" and m.get("executable"):
        print(m["executable"])
')
    node --no-warnings run.mjs "$wasm"
done
