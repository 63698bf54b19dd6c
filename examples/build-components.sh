#!/usr/bin/env bash
# Rebuilds the wasi:http component fixtures in examples/components/ from their sources:
# the Rust ones with the Rust toolchain's own wasm32-wasip2 target (`rustup target add
# wasm32-wasip2`), the Python one with componentize-py (installed from PyPI into a venv
# under examples/components/target). Tests use the committed outputs, not this.
# The Python component embeds CPython (18 MB), so it is committed gzipped:
# `gunzip -k examples/components/py-hello.wasm.gz` gives the module to serve.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)/components"
for name in rust-hello rust-echo spin-hello; do
  cargo build --release --target wasm32-wasip2 --manifest-path "$here/$name/Cargo.toml" \
    --target-dir "$here/target"
  cp "$here/target/wasm32-wasip2/release/${name//-/_}.wasm" "$here/$name.wasm"
  ls -l "$here/$name.wasm"
done

venv="$here/target/componentize-py"
[ -x "$venv/bin/componentize-py" ] || {
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q componentize-py==0.25.1
}
(cd "$here/py-hello" &&
  "$venv/bin/componentize-py" -d wit -w hello componentize app -o "$here/target/py-hello.wasm")
gzip -9n <"$here/target/py-hello.wasm" >"$here/py-hello.wasm.gz"
ls -l "$here/py-hello.wasm.gz"
