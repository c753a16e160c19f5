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
        RUSTFLAGS="-Zsanitizer=$s" \
        RUSTDOCFLAGS="-Zsanitizer=$s" \
        CARGO_TARGET_DIR="target/san-$s" \
            cargo +nightly test -Zbuild-std --target "$host" --lib --tests
    done
done
