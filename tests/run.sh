#!/usr/bin/env bash
# svmm's whole test command (README and CI call this):
#   1. images/build.sh all          guest kernel, initramfs, rootfs and test guest → images/out/
#   2. cargo build --release -p vmm --features test-faults
#                                   the svmm binary under test, with the test-only misbehaving
#                                   worker modes (--device rng,fault=...) the sandbox suite uses
#   3. cargo test --workspace --release --features vmm/test-faults --no-fail-fast
#                                   unit tests of every crate, then the integration binaries in
#                                   tests/tests/ (cli, testguest, devices, sandbox, linux), which
#                                   use that svmm
#
# Runnable from any directory. Extra arguments go to `cargo test`, e.g.
#   tests/run.sh -- --list            SVMM_SKIP_LINUX=1 tests/run.sh (skip the minutes-long Linux boots)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }

step "images/build.sh all   (in $ROOT)"
images/build.sh all

# The sandbox suite also runs svmm as an unprivileged user in the kvm group (its workers then
# live inside a user namespace). As root, make sure that account exists.
if [[ $(id -u) -eq 0 ]]; then
    getent group kvm >/dev/null || groupadd --system kvm
    if ! id svmm-test >/dev/null 2>&1; then
        step "creating the unprivileged test user svmm-test (group kvm)"
        useradd --system --no-create-home --shell /usr/sbin/nologin --groups kvm svmm-test
    fi
    # What Debian's udev rule does on hosts with the kvm group: members may use KVM.
    if [[ $(stat -c %G /dev/kvm) != kvm ]]; then
        step "giving the kvm group access to /dev/kvm (chgrp kvm, chmod 660)"
        chgrp kvm /dev/kvm && chmod 660 /dev/kvm
    fi
fi

step "cargo build --release -p vmm --features test-faults"
cargo build --release -p vmm --features test-faults

# The harness would find (and, if stale, rebuild) this binary itself; naming it makes the run
# test exactly what step 2 built, wherever the target directory is.
SVMM_BIN=$(cargo build --release -p vmm --features test-faults --bin svmm --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\/svmm\)".*/\1/p' | tail -n 1)
if [[ -z "$SVMM_BIN" || ! -x "$SVMM_BIN" ]]; then
    echo "run.sh: cannot find the svmm binary cargo just built" >&2
    exit 1
fi
export SVMM_BIN

# Fuzz targets (every crate's fuzz/ directory) must keep building; their corpora are replayed by
# ordinary tests in step 3. cargo-fuzz passes -Z flags, which need a nightly compiler: the
# nightly toolchain when rustup has one, else the machine's one toolchain with RUSTC_BOOTSTRAP=1
# (which lets a stable compiler accept them; rustup cannot fetch toolchains on every machine).
if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz_cargo=(cargo +nightly)
else
    fuzz_cargo=(env RUSTC_BOOTSTRAP=1 cargo)
fi
step "${fuzz_cargo[*]} fuzz build (every */fuzz)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
for fuzz in */fuzz/Cargo.toml; do
    crate=$(dirname "$(dirname "$fuzz")")
    (cd "$crate" && "${fuzz_cargo[@]}" fuzz build)
done
# The same feature here, so building the tests never rebuilds svmm without it.
step "cargo test --workspace --release --features vmm/test-faults --no-fail-fast $*   (SVMM_BIN=$SVMM_BIN)"
cargo test --workspace --release --features vmm/test-faults --no-fail-fast "$@"
