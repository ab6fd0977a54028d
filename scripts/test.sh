#!/usr/bin/env bash
# The project's whole test suite, as CI runs it on a fresh machine: installs what it needs,
# fetches and converts the real model (scripts/setup.sh), checks the no_std core builds for a
# Cortex-M, runs every cargo test (goldens, hostile files, gguf-py interop), PEFT loading petal's
# adapters, and the runtime's suite on aarch64 and armv7 under qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
log() { printf '[test] %s\n' "$*" >&2; }
# One-shot builds: incremental caches only cost disk (about 1 GB) and time here.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# The whole run needs about 12 GB of disk (target/ about 6, PEFT's torch with its CUDA wheels
# about 6): say how much there is, at the start and at the end, so a full disk is plain to see.
disk() { log "disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free, target/ $(du -sh target 2>/dev/null | cut -f1)"; }
disk

log "rust targets and the ARM cross toolchains"
TARGETS=(thumbv7em-none-eabihf aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
rustup target add "${TARGETS[@]}" >/dev/null 2>&1 || rustup target add "${TARGETS[@]}"
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null \
   || ! command -v qemu-arm >/dev/null || ! command -v arm-linux-gnueabihf-gcc >/dev/null; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf \
    libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user >/dev/null
fi

PETAL_PROFILE=dev bash scripts/setup.sh

log "no_std core for thumbv7em-none-eabihf"
cargo build --quiet -p petal-runtime --no-default-features --target thumbv7em-none-eabihf
cargo build --quiet -p petal-board --target thumbv7em-none-eabihf

# The kernel sets this machine must run, from the CPU's flags (apart from petal's own
# detection): a kernel test fails when one of them is missing instead of passing over it.
export PETAL_TEST_SCRIPT=1
x86_expected_kernels() {
  local flags have
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
  local IFS=,; echo "${sets[*]}"
}
export PETAL_EXPECT_KERNELS=$(x86_expected_kernels)
log "kernel sets this CPU must run: $PETAL_EXPECT_KERNELS"

log "cargo test --workspace"
mkdir -p target
set +e  # every stage runs, to print all failures, the duration and the summary
cargo test --workspace 2>&1 | tee target/test.log
status=${PIPESTATUS[0]}
failed=()
[ "$status" = 0 ] || failed+=("cargo test --workspace")
disk

# PEFT itself loads the adapter directories petal writes (installs torch, transformers, peft).
log "PEFT loads petal's adapters (tests/interop/peft_load.sh)"
bash tests/interop/peft_load.sh target/debug/petal 2>&1 | tee -a target/test.log
[ "${PIPESTATUS[0]}" = 0 ] || failed+=("PEFT loading")

# The runtime's suite on ARM Linux under qemu-user (.cargo/config.toml sets linkers and
# runners): aarch64 on QEMU's default CPU and on a Cortex-A53 (no dotprod, no i8mm), and armv7.
# target:QEMU_CPU:kernel sets that CPU must run (QEMU's default aarch64 CPU has dotprod and i8mm).
for run in "aarch64-unknown-linux-gnu::generic,neon,neon+dotprod,neon+dotprod+i8mm" \
           "aarch64-unknown-linux-gnu:cortex-a53:generic,neon" \
           "armv7-unknown-linux-gnueabihf::generic,armv7-neon"; do
  target=${run%%:*} rest=${run#*:} cpu=${rest%%:*}
  export PETAL_EXPECT_KERNELS=${rest#*:}
  log "petal-runtime tests on $target under qemu${cpu:+ (QEMU_CPU=$cpu)}"
  if [ -n "$cpu" ]; then export QEMU_CPU=$cpu; else unset QEMU_CPU; fi
  cargo test -p petal-runtime --target "$target" 2>&1 | tee -a target/test.log
  [ "${PIPESTATUS[0]}" = 0 ] || failed+=("$target${cpu:+ ($cpu)}")
done
disk
log "finished in $(( $(date +%s) - start )) s"
grep -h "^test result:" target/test.log | awk '{p+=$4; f+=$6} END {printf "summary: %d passed, %d failed\n", p, f}'
if [ "${#failed[@]}" -gt 0 ]; then
  log "FAILED: ${failed[*]}"
  exit 1
fi
