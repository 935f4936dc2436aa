#!/usr/bin/env bash
# images/build.sh: build svmm's guest artefacts into images/out/ (see images/README.md).
#
#   images/build.sh [all|kernel|rootfs|testguest]      (default: all)
#
#   kernel     out/vmlinux, out/bzImage   Debian linux-source-6.1 + tinyconfig + kernel/svmm.config
#                                         + kernel/*.patch, built in $SVMM_CACHE (~7 min on 2 cores)
#   rootfs     out/rootfs.ext4, out/initramfs.cpio.gz, out/rootfs.tree/   busybox-static + rootfs/init
#   testguest  out/testguest.elf          cargo build of images/testguest (if it exists)
#
# Environment: SVMM_CACHE (default ~/.cache/svmm), SVMM_JOBS (default: nproc).
# Idempotent and incremental: a step whose inputs did not change prints "up to date".
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
IMAGES=$(dirname "$SELF")
OUT=$IMAGES/out
CACHE=${SVMM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/svmm}
JOBS=${SVMM_JOBS:-$(nproc)}

KSRC_PKG=linux-source-6.1
KSRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
KSRC_DIRNAME=linux-source-6.1          # top-level directory inside the tarball
ROOTFS_SIZE_MIB=32
# Fixed file-system UUID and directory hash seed ("svmm" "ro" "ot" "fs" in hex): reproducible images.
ROOTFS_UUID=73766d6d-726f-6f74-6673-000000000001
# Fixed timestamp (2023-01-01 UTC) for every file and for the file system itself
# (mke2fs ignores E2FSPROGS_FAKE_TIME=0, so not 0).
ROOTFS_EPOCH=1672531200

say() { printf '%-10s %s\n' "$1:" "${*:2}"; }
die() { printf 'images/build.sh: error: %s\n' "$*" >&2; exit 1; }

sha() { sha256sum | cut -c1-16; }

# Hold an exclusive lock on file $2 through fd $1 until the script exits (concurrent runs).
lock() {
    mkdir -p "$(dirname "$2")"
    eval "exec $1> \"\$2\""
    if ! flock -n "$1"; then
        say lock "waiting for another images/build.sh to release $2"
        flock "$1"
    fi
}

# Copy $1 to $2 unless they are already identical (keeps the mtime of unchanged outputs).
install_if_changed() {
    if cmp -s "$1" "$2"; then
        return 1
    fi
    cp "$1" "$2.tmp"
    mv -f "$2.tmp" "$2"
}

# ---------------------------------------------------------------------------------------------
# Host packages: install only the missing ones (one apt-get update, one apt-get install).

KERNEL_PKGS=(linux-source-6.1 build-essential bc flex bison libelf-dev libssl-dev xz-utils lz4
             kmod cpio)
ROOTFS_PKGS=(busybox-static e2fsprogs cpio gzip)
# Not image inputs: the test suite boots the test guest under QEMU microvm too (the benchmark's
# peer), and watches svmm's own system calls with strace in one trial (the order of its VM
# teardown), and runs a real Wayland compositor for the wayland device (weston, headless, with
# its screenshooter; wayland-utils' wayland-info lists its globals), and gives the net device
# real peers in network namespaces the tests make (iproute2's ip for namespaces, taps and veths;
# passt for user-mode networking), and gives the unprivileged test user's workers subordinate
# ids (uidmap's newuidmap/newgidmap), so `all` (what tests/run.sh runs) makes sure they are there.
HARNESS_PKGS=(qemu-system-x86 strace weston wayland-utils iproute2 passt uidmap)

ensure_packages() {
    command -v dpkg-query >/dev/null || die "this script expects a Debian host (dpkg/apt); needed: $*"
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null \
            || die "missing packages (${missing[*]}); run as root or install them: apt-get install ${missing[*]}"
        sudo=(sudo)
    fi
    say packages "installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        || die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed"
}

# ---------------------------------------------------------------------------------------------
# Kernel

KFRAGMENT=$IMAGES/kernel/svmm.config

kernel_patches() {
    find "$IMAGES/kernel" -maxdepth 1 -name '*.patch' -print | LC_ALL=C sort
}

# Recipe part 1, run once per cache directory ($1 = kernel source tree): patch and configure.
# Its text (declare -f) is part of the cache key.
kernel_prepare() {
    # Called as `kernel_prepare ... || ...`, where set -e does not apply: check every step.
    local src=$1 p
    for p in $(kernel_patches); do
        patch -d "$src" -p1 --forward < "$p" \
            || { echo "patch $(basename "$p") does not apply" >&2; return 1; }
    done
    make -C "$src" ARCH=x86_64 tinyconfig || return 1
    (cd "$src" && ./scripts/kconfig/merge_config.sh -m .config "$KFRAGMENT") || return 1
    make -C "$src" ARCH=x86_64 olddefconfig || return 1
}

# Recipe part 2 ($1 = source tree, $2 = build timestamp string): build vmlinux and bzImage.
kernel_make() {
    make -C "$1" ARCH=x86_64 -j"$JOBS" \
        KBUILD_BUILD_USER=svmm KBUILD_BUILD_HOST=svmm KBUILD_BUILD_TIMESTAMP="$2" \
        vmlinux bzImage
}

# Every option line of the fragment must appear in .config exactly as requested.
kernel_check_config() {
    local config=$1 line opt val bad=()
    while IFS= read -r line; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            opt=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]}
            grep -qxF "$opt=$val" "$config" \
                || bad+=("$opt=$val (got: $(grep -E "^$opt=|^# $opt is not set" "$config" || echo absent))")
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            opt=${BASH_REMATCH[1]}
            ! grep -qE "^$opt=" "$config" \
                || bad+=("$opt off (got: $(grep -E "^$opt=" "$config"))")
        fi
    done < "$KFRAGMENT"
    if [ ${#bad[@]} -gt 0 ]; then
        printf 'images/build.sh: error: kernel option not as requested in %s (unmet dependency?):\n' \
            "${KFRAGMENT#"$IMAGES/"}" >&2
        printf '    %s\n' "${bad[@]}" >&2
        exit 1
    fi
}

# The ELF vmlinux must carry the PVH entry note (owner "Xen", type 0x12, XEN_ELFNOTE_PHYS32_ENTRY).
kernel_check_pvh() {
    readelf -n "$1" | grep -Eq '^\s*Xen\s+0x[0-9a-f]+\s+.*0x0*12\b' \
        || die "$1 has no PVH ELF note (Xen note type 0x12); is CONFIG_PVH set?"
}

build_kernel() {
    [ -f "$KSRC_TARBALL" ] || die "$KSRC_TARBALL missing (package $KSRC_PKG)"
    [ -f "$KFRAGMENT" ] || die "$KFRAGMENT missing"
    local version key dir src log stamp t0
    version=$(dpkg-query -W -f='${Version}' "$KSRC_PKG")
    key=$({
        echo "$version"
        cat "$KFRAGMENT"
        local p
        for p in $(kernel_patches); do basename "$p"; cat "$p"; done
        declare -f kernel_prepare kernel_make
    } | sha)
    lock 8 "$CACHE/kernel/.lock"    # the cached trees are shared by all clones
    dir=$CACHE/kernel/${version//[:\/]/_}-$key
    src=$dir/$KSRC_DIRNAME
    log=$dir/build.log
    # A fixed, per-package build date for `uname -v` (and the kernel's built-in initramfs).
    stamp=$(date -u -d "@$(stat -c %Y "$KSRC_TARBALL")" '+%a %b %e %H:%M:%S UTC %Y')

    if [ -f "$dir/.built" ] && [ -f "$src/vmlinux" ] && [ -f "$src/arch/x86/boot/bzImage" ]; then
        say kernel "up to date ($dir)"
    else
        t0=$SECONDS
        if [ ! -f "$dir/.prepared" ]; then
            say kernel "unpacking $KSRC_PKG $version into $dir"
            rm -rf "$dir"
            mkdir -p "$dir"
            tar -C "$dir" -xf "$KSRC_TARBALL"
            [ -d "$src" ] || die "$KSRC_TARBALL has no top-level $KSRC_DIRNAME/"
            say kernel "patching and configuring (tinyconfig + ${KFRAGMENT#"$IMAGES/"})"
            kernel_prepare "$src" > "$log" 2>&1 \
                || { tail -n 30 "$log" >&2; die "kernel configuration failed (log: $log)"; }
            kernel_check_config "$src/.config"
            touch "$dir/.prepared"
        else
            say kernel "resuming the build in $dir"
        fi
        say kernel "building vmlinux + bzImage with $JOBS jobs (~7 min on 2 cores; log: $log)"
        kernel_make "$src" "$stamp" >> "$log" 2>&1 \
            || { tail -n 30 "$log" >&2; die "kernel build failed (log: $log)"; }
        kernel_check_config "$src/.config"
        touch "$dir/.built"
        say kernel "built in $((SECONDS - t0)) s"
    fi

    kernel_check_pvh "$src/vmlinux"
    mkdir -p "$OUT"
    local changed=0
    install_if_changed "$src/vmlinux" "$OUT/vmlinux" && changed=1
    install_if_changed "$src/arch/x86/boot/bzImage" "$OUT/bzImage" && changed=1
    if [ $changed = 1 ]; then
        say kernel "wrote out/vmlinux ($(du -h --apparent-size "$OUT/vmlinux" | cut -f1)) and out/bzImage ($(du -h --apparent-size "$OUT/bzImage" | cut -f1))"
    fi
}

# ---------------------------------------------------------------------------------------------
# Root file system: one staging tree, packed as ext4 (root disk) and as gzip'd newc cpio (initramfs).

# Fill the staging directory $1. Runs as root (or under fakeroot) so that device nodes and
# ownership end up right in both images.
rootfs_stage() {
    local st=$1 path dir rel name
    mkdir -p "$st"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,etc,mnt,run}
    chmod 1777 "$st/tmp"
    chmod 0700 "$st/root"
    install -m 0755 /bin/busybox "$st/bin/busybox"
    # busybox --install -s, done at image build time with relative links.
    while IFS= read -r path; do
        case $path in
            sbin/init|linuxrc|bin/busybox) continue ;;   # /sbin/init is our script
        esac
        dir=${path%/*} name=${path##*/}
        case $dir in
            bin) rel=busybox ;;
            sbin) rel=../bin/busybox ;;
            usr/bin|usr/sbin) rel=../../bin/busybox ;;
            *) die "unexpected busybox applet path $path" ;;
        esac
        [ -e "$st/$path" ] || ln -s "$rel" "$st/$path"
    done < <(/bin/busybox --list-full | LC_ALL=C sort)
    install -m 0755 "$IMAGES/rootfs/init" "$st/init"
    ln -s ../init "$st/sbin/init"
    # The kernel opens /dev/console before init runs, before any devtmpfs is mounted.
    mknod -m 0600 "$st/dev/console" c 5 1
    mknod -m 0666 "$st/dev/null" c 1 3
    printf 'root:x:0:0:root:/root:/bin/sh\n' > "$st/etc/passwd"
    printf 'root:x:0:\n' > "$st/etc/group"
    printf 'svmm\n' > "$st/etc/hostname"
    chown -R -h 0:0 "$st"
    find "$st" -exec touch -h -d "@$ROOTFS_EPOCH" {} +
}

# Stage into $1 and write $2 (ext4) and $3 (cpio.gz).
rootfs_pack() {
    local st=$1 ext4=$2 cpio=$3
    rm -rf "$st"
    rootfs_stage "$st"
    rm -f "$ext4"
    truncate -s "${ROOTFS_SIZE_MIB}M" "$ext4"
    E2FSPROGS_FAKE_TIME=$ROOTFS_EPOCH mkfs.ext4 -q -F -L svmm-root -U "$ROOTFS_UUID" -I 256 \
        -E "root_owner=0:0,hash_seed=$ROOTFS_UUID" -d "$st" "$ext4"
    # mke2fs -d copies each file's ctime, which touch cannot set: pin it with debugfs.
    local err
    err=$( (cd "$st" && find . | LC_ALL=C sort) \
        | sed -e 's|^\.||' -e 's|^$|/|' -e 's|.*|sif "&" ctime @'"$ROOTFS_EPOCH"'|' \
        | { cat; echo "sif /lost+found ctime @$ROOTFS_EPOCH"; } \
        | E2FSPROGS_FAKE_TIME=$ROOTFS_EPOCH debugfs -w -f - "$ext4" 2>&1 >/dev/null | grep -v '^debugfs [0-9]' || true)
    [ -z "$err" ] || die "debugfs on $ext4: $err"
    (cd "$st" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) \
        | gzip -9 -n > "$cpio"
}

build_rootfs() {
    [ -f "$IMAGES/rootfs/init" ] || die "$IMAGES/rootfs/init missing"
    [ -x /bin/busybox ] || die "/bin/busybox missing (package busybox-static)"
    file_is_static /bin/busybox || die "/bin/busybox is not statically linked (install busybox-static)"
    local key stampf=$OUT/.rootfs.stamp
    lock 7 "$OUT/.rootfs.lock"
    key=$({
        cat "$IMAGES/rootfs/init"
        dpkg-query -W -f='${Version}\n' busybox-static e2fsprogs cpio
        declare -f rootfs_stage rootfs_pack
        echo "$ROOTFS_SIZE_MIB $ROOTFS_UUID $ROOTFS_EPOCH"
    } | sha)
    if [ -f "$stampf" ] && [ "$(cat "$stampf")" = "$key" ] \
        && [ -f "$OUT/rootfs.ext4" ] && [ -f "$OUT/initramfs.cpio.gz" ] \
        && [ -x "$OUT/rootfs.tree/init" ]; then
        say rootfs "up to date (out/rootfs.ext4, out/initramfs.cpio.gz, out/rootfs.tree/)"
        return
    fi
    say rootfs "building out/rootfs.ext4 (${ROOTFS_SIZE_MIB} MiB) and out/initramfs.cpio.gz"
    mkdir -p "$OUT"
    rm -f "$stampf"
    local st=$OUT/.rootfs-staging
    if [ "$(id -u)" -eq 0 ]; then
        rootfs_pack "$st" "$OUT/rootfs.ext4.tmp" "$OUT/initramfs.cpio.gz.tmp"
    else
        # Device nodes and root ownership without root.
        fakeroot -- "$SELF" __rootfs_pack "$st" "$OUT/rootfs.ext4.tmp" "$OUT/initramfs.cpio.gz.tmp"
    fi
    # The same tree as a directory: the virtio-fs root (rootfstype=virtiofs). Device nodes are
    # real only when built as root (under fakeroot they come out as empty files).
    rm -rf "$OUT/rootfs.tree"
    mv "$st" "$OUT/rootfs.tree"
    mv -f "$OUT/rootfs.ext4.tmp" "$OUT/rootfs.ext4"
    mv -f "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
    echo "$key" > "$stampf"
    say rootfs "wrote out/rootfs.ext4, out/initramfs.cpio.gz ($(du -h --apparent-size "$OUT/initramfs.cpio.gz" | cut -f1)) and out/rootfs.tree/"
}

file_is_static() {
    # No program interpreter = statically linked.
    ! readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'
}

# ---------------------------------------------------------------------------------------------
# Test guest (images/testguest, written separately; skipped while it does not exist).

build_testguest() {
    local dir=$IMAGES/testguest target=x86_64-unknown-none
    if [ ! -f "$dir/Cargo.toml" ]; then
        say testguest "skipped (no images/testguest/Cargo.toml yet)"
        return
    fi
    command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"
    command -v rustup >/dev/null || die "rustup not found (needed for the $target target)"
    local outp
    # Run from the crate directory so its rust-toolchain / .cargo/config.toml apply.
    outp=$(cd "$dir" && rustup target add "$target" 2>&1) \
        || { echo "$outp" >&2; die "rustup target add $target failed"; }
    say testguest "cargo build --release (images/testguest)"
    # Its own target directory, also when CARGO_TARGET_DIR points elsewhere: the ELF is taken
    # from there.
    (cd "$dir" && cargo build --release --quiet --target "$target" --target-dir "$dir/target") \
        || die "test guest build failed"
    local elf=$dir/target/$target/release/testguest
    [ -f "$elf" ] || die "$elf not produced by cargo"
    mkdir -p "$OUT"
    if install_if_changed "$elf" "$OUT/testguest.elf"; then
        say testguest "wrote out/testguest.elf ($(du -h --apparent-size "$OUT/testguest.elf" | cut -f1))"
    else
        say testguest "up to date (out/testguest.elf)"
    fi
}

# ---------------------------------------------------------------------------------------------

usage() {
    sed -n '2,12s/^# \{0,1\}//p' "$SELF"
}

main() {
    local what=${1:-all}
    case $what in
        __rootfs_pack) shift; rootfs_pack "$@"; return ;;   # internal: re-run under fakeroot
        all|kernel|rootfs|testguest) ;;
        -h|--help|help) usage; return ;;
        *) usage >&2; exit 2 ;;
    esac
    [ $# -le 1 ] || { usage >&2; exit 2; }

    local pkgs=()
    case $what in
        all) pkgs=("${KERNEL_PKGS[@]}" "${ROOTFS_PKGS[@]}" "${HARNESS_PKGS[@]}") ;;
        kernel) pkgs=("${KERNEL_PKGS[@]}") ;;
        rootfs) pkgs=("${ROOTFS_PKGS[@]}" binutils) ;;
    esac
    if [ "$what" = all ] || [ "$what" = rootfs ]; then
        [ "$(id -u)" -eq 0 ] || pkgs+=(fakeroot)
    fi
    [ ${#pkgs[@]} -eq 0 ] || ensure_packages "${pkgs[@]}"

    case $what in
        all) build_kernel; build_rootfs; build_testguest ;;
        kernel) build_kernel ;;
        rootfs) build_rootfs ;;
        testguest) build_testguest ;;
    esac
}

# Braces + exit: bash reads scripts as it runs them, so an edit during a build must not matter.
{ main "$@"; exit; }
