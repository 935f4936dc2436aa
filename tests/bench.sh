#!/usr/bin/env bash
# svmm's benchmark (the README's third command): svmm with sandboxed device workers vs svmm with
# the same devices in-process vs QEMU microvm, alternating, in one run of under 10 minutes.
#   1. apt-get install qemu-system-x86      only if qemu-system-x86_64 is missing (and QEMU_BIN unset)
#      apt-get install weston wayland-utils only if weston is missing (the bench_wl_* tests run
#                                           the wayland device against a headless weston)
#   2. images/build.sh testguest            the test guest → images/out/testguest.elf
#   3. cargo build --release -p vmm         the svmm binary measured (no test-only features)
#   4. cargo run --release -p tests --bin svmm-bench -- "$@"
#                                           prints the table, writes BENCHMARKS.md and
#                                           benchmarks.svg in the repository root
#
# Runnable from any directory. Arguments go to svmm-bench (`tests/bench.sh --help`), e.g.
#   tests/bench.sh --reps 3 --bench-ms 300          a quicker run
#   SVMM_BENCH_GUEST=/path/to/testguest tests/bench.sh   another test guest
# Not part of tests/run.sh (CI): it takes minutes and its figures are for people to read.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }

if [[ -z "${QEMU_BIN:-}" ]] && ! command -v qemu-system-x86_64 >/dev/null; then
    step "installing qemu-system-x86 (the benchmark's peer)"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-system-x86
fi

# QEMU's peer of the fs device: Debian 12 ships virtiofsd in qemu-system-common
# (/usr/lib/qemu/virtiofsd), Debian 13 as the virtiofsd package (/usr/libexec/virtiofsd).
if [[ -z "${VIRTIOFSD:-}" && ! -x /usr/lib/qemu/virtiofsd && ! -x /usr/libexec/virtiofsd ]] \
    && apt-cache show virtiofsd >/dev/null 2>&1; then
    step "installing virtiofsd (QEMU's virtio-fs daemon)"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q virtiofsd
fi

# The wayland device's peer: svmm-bench starts a headless weston for the bench_wl_* tests.
if ! command -v weston >/dev/null || ! command -v wayland-info >/dev/null; then
    step "installing weston and wayland-utils (the compositor of the bench_wl_* tests)"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q weston wayland-utils
fi

step "images/build.sh testguest"
images/build.sh testguest

step "cargo build --release -p vmm --bin svmm"
cargo build --release -p vmm --bin svmm
# Exactly the binary just built, wherever the target directory is.
SVMM_BIN=$(cargo build --release -p vmm --bin svmm --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\/svmm\)".*/\1/p' | tail -n 1)
if [[ -z "$SVMM_BIN" || ! -x "$SVMM_BIN" ]]; then
    echo "bench.sh: cannot find the svmm binary cargo just built" >&2
    exit 1
fi
export SVMM_BIN
export SVMM_BENCH_INVOCATION="${SVMM_BENCH_GUEST:+SVMM_BENCH_GUEST=$SVMM_BENCH_GUEST }tests/bench.sh${*:+ $*}"

# The net benchmarks' peer runs next to svmm-bench (it finds it beside its own binary); the
# network namespace needs iproute2's `ip`, as the test suite's does.
if ! command -v ip >/dev/null; then
    step "installing iproute2 (network namespaces for the net benchmarks)"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2
fi
cargo build --release -q -p tests --bin svmm-netpeer

step "svmm-bench $*   (SVMM_BIN=$SVMM_BIN)"
cargo run --release -q -p tests --bin svmm-bench -- "$@"
