#!/usr/bin/env bash
# Rebuilds the Rust WAGI guests whose .wasm is committed: examples/rust-hello.wasm from
# examples/rust-hello/ and engines/tests/guests/rust-sleep.wasm from its crate beside it.
# Needs the wasm32-wasip1 target (`rustup target add wasm32-wasip1`). Tests use the
# committed .wasm, not this.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build() { # crate directory, output .wasm
  local name
  name="$(basename "$1")"
  cargo build --release --target wasm32-wasip1 --manifest-path "$1/Cargo.toml" \
    --target-dir "$1/target"
  cp "$1/target/wasm32-wasip1/release/$name.wasm" "$2"
  ls -l "$2"
}
build "$here/rust-hello" "$here/rust-hello.wasm"
build "$here/../engines/tests/guests/rust-sleep" "$here/../engines/tests/guests/rust-sleep.wasm"
