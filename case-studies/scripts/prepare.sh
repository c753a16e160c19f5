#!/usr/bin/env bash
# Builds case-studies/patched/: registry crates at their pinned versions
# with only their lock aliases swapped to freeq's, from the patches in
# case-studies/patches/. Idempotent: the copy is made afresh each time.
#
#   bash case-studies/scripts/prepare.sh
#
# Needs the crates in cargo's registry cache (`cargo fetch` here brings
# them). Each patched copy is a package of its own: `cargo test` inside it
# runs the crate's own test suite on freeq's locks.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

patch_crate() { # name version patch-file
    local name="$1" version="$2" patchfile="$3"
    local src
    src="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name "$name-$version" 2>/dev/null | head -n1)"
    if [ -z "$src" ]; then
        # The registry copy is missing: fetch it without resolving the
        # package (whose manifest names the patched copy, not there yet).
        local tmp
        tmp="$(mktemp -d)"
        printf '[package]\nname = "fetch-%s"\nversion = "0.0.0"\nedition = "2021"\n[workspace]\n[dependencies]\n%s = "=%s"\n' \
            "$name" "$name" "$version" > "$tmp/Cargo.toml"
        mkdir "$tmp/src" && : > "$tmp/src/lib.rs"
        cargo fetch --manifest-path "$tmp/Cargo.toml" >/dev/null
        rm -rf "$tmp"
        src="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name "$name-$version" | head -n1)"
    fi
    local dst="patched/$name"
    rm -rf "$dst"
    mkdir -p patched
    cp -r "$src" "$dst"
    chmod -R u+w "$dst"
    # The crate pins an older toolchain for its own CI; build with ours.
    rm -f "$dst/rust-toolchain.toml" "$dst/rust-toolchain"
    # The registry's lock file predates the freeq dependency.
    rm -f "$dst/Cargo.lock"
    patch -s -p1 -d "$dst" < "patches/$patchfile"
    echo "prepared $dst from $name $version + patches/$patchfile"
}

patch_crate dashmap 6.2.1 dashmap.patch
