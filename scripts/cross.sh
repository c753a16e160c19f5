#!/usr/bin/env bash
# Builds the library for every platform freeq supports (`cargo check`, all
# features), then runs clippy with `-D warnings` for each (code compiled out
# by a `cfg` on macOS, Windows or wasm shows up there as dead code). A
# target whose standard library cannot be installed is reported as skipped
# (by name, and again at the end), and makes the script fail unless
# FREEQ_CROSS_ALLOW_SKIP=1.
#
# Usage: bash scripts/cross.sh [TARGET...]   (default: all of them)
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(
    x86_64-unknown-linux-gnu
    aarch64-unknown-linux-gnu
    i686-unknown-linux-gnu
    armv7-unknown-linux-gnueabihf
    x86_64-apple-darwin
    aarch64-apple-darwin
    x86_64-pc-windows-msvc
    x86_64-pc-windows-gnu
    x86_64-unknown-freebsd
    wasm32-unknown-unknown
    wasm32-wasip1
)
if [ $# -gt 0 ]; then
    targets=("$@")
fi
# Separate from the host build, so that stays warm.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/cross"

skipped=()
failed=()
for t in "${targets[@]}"; do
    if ! rustup target list --installed 2>/dev/null | grep -qx "$t" &&
        ! rustup target add "$t" >/dev/null 2>&1; then
        echo "cross: SKIPPED $t: its standard library cannot be installed here"
        skipped+=("$t")
        continue
    fi
    start=$SECONDS
    if ! cargo check --lib --all-features --target "$t" --quiet; then
        failed+=("$t (check)")
    fi
    if ! cargo clippy --lib --all-features --target "$t" --quiet -- -D warnings; then
        failed+=("$t (clippy)")
    fi
    echo "cross: $t done in $((SECONDS - start)) s"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "cross: FAILED: ${failed[*]}" >&2
    exit 1
fi
if [ ${#skipped[@]} -gt 0 ]; then
    echo "cross: skipped (not installable): ${skipped[*]}" >&2
    if [ "${FREEQ_CROSS_ALLOW_SKIP:-0}" != 1 ]; then
        exit 1
    fi
fi
echo "cross: $((${#targets[@]} - ${#skipped[@]})) of ${#targets[@]} targets build; ${#skipped[@]} skipped"
