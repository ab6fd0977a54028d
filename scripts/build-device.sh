#!/usr/bin/env bash
# Cross-builds the device binary of petal for an ARM Linux board: the runtime, adaptation and
# `petal serve`, without the converters and tract (the host build's `convert` feature).
# usage: bash scripts/build-device.sh aarch64|armv7
# The last line printed is the binary's path. Needs the Rust target and Debian's gcc cross
# linker (scripts/test.sh installs both: rustup target add, apt-get install gcc-aarch64-linux-gnu
# gcc-arm-linux-gnueabihf).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  aarch64) target=aarch64-unknown-linux-gnu ;;
  armv7) target=armv7-unknown-linux-gnueabihf ;;
  *) echo "usage: bash scripts/build-device.sh aarch64|armv7" >&2; exit 2 ;;
esac
rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2
start=$(date +%s)
cargo build --profile device -p petal-tools --no-default-features --target "$target" >&2
bin="${CARGO_TARGET_DIR:-target}/$target/device/petal"
bytes=$(stat -c %s "$bin")
awk -v t="$target" -v b="$bytes" -v s="$(( $(date +%s) - start ))" \
  'BEGIN { printf "[device] %s: %d bytes (%.1f MB, stripped), built in %d s\n", t, b, b / 1e6, s }' >&2
echo "$bin"
