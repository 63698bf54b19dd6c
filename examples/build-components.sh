#!/usr/bin/env bash
# Rebuilds the wasi:http component fixtures in examples/components/*.wasm from their sources
# with the Rust toolchain's own wasm32-wasip2 target (`rustup target add wasm32-wasip2`).
# Tests use the committed .wasm files, not this.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)/components"
for name in rust-hello rust-echo spin-hello; do
  cargo build --release --target wasm32-wasip2 --manifest-path "$here/$name/Cargo.toml" \
    --target-dir "$here/target"
  cp "$here/target/wasm32-wasip2/release/${name//-/_}.wasm" "$here/$name.wasm"
  ls -l "$here/$name.wasm"
done
