#!/usr/bin/env bash
# The project's whole test suite, as CI runs it on a fresh machine: installs what it needs,
# fetches and converts the real model (scripts/setup.sh), checks the no_std core builds for a
# Cortex-M, runs every cargo test (goldens, hostile files, gguf-py interop, concurrency, SIGKILL
# during writes), PEFT loading petal's adapters, llama.cpp (built from source) reading petal's
# files and petal reading llama.cpp's, Miri on the GGUF reader and the scalar reference kernels,
# and the runtime's suite on aarch64 and armv7 under qemu-user. Every stage runs and prints its
# duration; the summary lists the stages that failed.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
log() { printf '[test] %s\n' "$*" >&2; }
# One-shot builds: incremental caches only cost disk (about 1 GB) and time here.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# The whole run needs about 14 GB of disk (target/ about 6, PEFT's torch with its CUDA wheels
# about 6, llama.cpp's build about 1): say how much there is, at the start and at the end.
disk() { log "disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free, target/ $(du -sh target 2>/dev/null | cut -f1)"; }
disk
mkdir -p target
: > target/test.log
failed=()
durations=()
# stage NAME COMMAND...: runs the command with its output in target/test.log, records its
# duration and whether it failed, and goes on either way.
stage() {
  local name=$1 t0 status
  shift
  log "== $name"
  t0=$(date +%s)
  set +e
  (set -e; "$@") 2>&1 | tee -a target/test.log
  status=${PIPESTATUS[0]}
  set -e
  durations+=("$(printf '%5d s  %s%s' "$(( $(date +%s) - t0 ))" "$name" "$([ "$status" = 0 ] || echo "  FAILED")")")
  log "$name: $(( $(date +%s) - t0 )) s, exit $status"
  [ "$status" = 0 ] || failed+=("$name")
}

install_toolchains() {
  local targets=(thumbv7em-none-eabihf aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
  rustup target add "${targets[@]}" >/dev/null 2>&1 || rustup target add "${targets[@]}"
  # Miri on the nightly toolchain (the GGUF reader's and the reference kernels' tests).
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
  rustup +nightly component add miri rust-src >/dev/null 2>&1 || rustup +nightly component add miri rust-src
  if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null \
     || ! command -v qemu-arm >/dev/null || ! command -v arm-linux-gnueabihf-gcc >/dev/null; then
    local sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf \
      libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user >/dev/null
  fi
}
stage "rust targets, nightly Miri, ARM cross toolchains" install_toolchains

stage "setup (assets, petal, MiniLM files)" env PETAL_PROFILE=dev bash scripts/setup.sh

no_std_core() {
  cargo build --quiet -p petal-runtime --no-default-features --target thumbv7em-none-eabihf &&
    cargo build --quiet -p petal-board --target thumbv7em-none-eabihf
}
stage "no_std core for thumbv7em-none-eabihf" no_std_core

# The kernel sets this machine must run, from the CPU's flags (apart from petal's own
# detection): a kernel test fails when one of them is missing instead of passing over it.
export PETAL_TEST_SCRIPT=1
x86_expected_kernels() {
  local flags
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  have() { for f in "$@"; do [[ $flags == *" $f "* ]] || return 1; done; }
  local sets=(generic)
  if have avx2 fma f16c; then
    sets+=(avx2)
    have avx512_vnni avx512vl && sets+=(avx2+avx512vnni)
    have avx_vnni && sets+=(avx2+avxvnni)
    if have amx_tile amx_int8 avx512f && { have avx512_vnni avx512vl || have avx_vnni; }; then
      sets+=(avx2+amx)
      have amx_bf16 avx512_bf16 avx512vl avx512bw && sets+=(avx2+amx-bf16)
    fi
  fi
  local IFS=,
  echo "${sets[*]}"
}
PETAL_EXPECT_KERNELS=$(x86_expected_kernels)
export PETAL_EXPECT_KERNELS
log "kernel sets this CPU must run: $PETAL_EXPECT_KERNELS"

stage "cargo test --workspace" cargo test --workspace --no-fail-fast
disk

# The device binaries for ARM Linux boards (the runtime, adaptation and `petal serve`; no
# converters, no tract), then TEI's and OpenAI's Python clients against `petal serve`: the host
# build, and the aarch64 device build under qemu-aarch64 answering the host's client.
device_builds() {
  local a
  for a in aarch64 armv7; do bash scripts/build-device.sh "$a"; done
}
stage "device builds for aarch64 and armv7" device_builds
stage "TEI's and OpenAI's clients against petal serve (host; aarch64 device build under qemu)" \
  bash tests/interop/serve_clients.sh target/debug/petal target/aarch64-unknown-linux-gnu/device/petal

# PEFT itself loads the adapter directories petal writes (installs torch, transformers, peft).
stage "PEFT loads petal's adapters" bash tests/interop/peft_load.sh target/debug/petal

# llama.cpp built from source (llama-embedding only) against petal's files, and its converter's
# file read by petal (needs the PEFT stage's torch).
stage "llama.cpp and petal on each other's files" bash tests/interop/llama_cpp.sh target/debug/petal

# Miri (undefined behaviour, out-of-bounds and aliasing checks) on the GGUF reader's tests and
# the scalar reference kernels' (the SIMD sets are not detected under Miri); a subset, kept to a
# few minutes.
miri() {
  env -u PETAL_EXPECT_KERNELS -u PETAL_TEST_SCRIPT MIRIFLAGS=-Zmiri-disable-isolation \
    cargo +nightly miri test -p petal-runtime --test gguf_hostile --test kernels --lib -- \
    gguf:: quant:: gemm:: valid_handmade bad_ unsupported truncated absurd misaligned \
    tensor_past unknown_tensor shape_size duplicate overlapping \
    rows_write_only_their_columns block_dots_match f32_dots_match q8_0_tiles_match
}
stage "Miri: GGUF reader and reference kernels" miri

# The runtime's suite on ARM Linux under qemu-user (.cargo/config.toml sets linkers and
# runners), each with the kernel sets that CPU must run: QEMU's default aarch64 CPU (dotprod
# and i8mm), a Cortex-A53 (neither), and armv7.
for run in "aarch64-unknown-linux-gnu::generic,neon,neon+dotprod,neon+dotprod+i8mm" \
           "aarch64-unknown-linux-gnu:cortex-a53:generic,neon" \
           "armv7-unknown-linux-gnueabihf::generic,armv7-neon"; do
  target=${run%%:*} rest=${run#*:} cpu=${rest%%:*}
  if [ -n "$cpu" ]; then export QEMU_CPU=$cpu; else unset QEMU_CPU; fi
  stage "petal-runtime tests on $target under qemu${cpu:+ (QEMU_CPU=$cpu)}" \
    env PETAL_EXPECT_KERNELS="${rest#*:}" cargo test -p petal-runtime --target "$target"
done
unset QEMU_CPU
disk

log "stage durations:"
printf '  %s\n' "${durations[@]}" >&2
log "finished in $(( $(date +%s) - start )) s"
grep -h "^test result:" target/test.log | awk '{p+=$4; f+=$6} END {printf "summary: %d passed, %d failed\n", p, f}'
if [ "${#failed[@]}" -gt 0 ]; then
  log "FAILED: ${failed[*]}"
  exit 1
fi
