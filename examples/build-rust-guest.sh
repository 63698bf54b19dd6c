#!/usr/bin/env bash
# Rebuilds examples/rust-hello.wasm from examples/rust-hello/. Needs the wasm32-wasip1
# target (`rustup target add wasm32-wasip1`). Tests use the committed .wasm, not this.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cargo build --release --target wasm32-wasip1 --manifest-path "$here/rust-hello/Cargo.toml" \
  --target-dir "$here/rust-hello/target"
cp "$here/rust-hello/target/wasm32-wasip1/release/rust-hello.wasm" "$here/rust-hello.wasm"
ls -l "$here/rust-hello.wasm"
