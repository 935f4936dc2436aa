//! Links the guest with `link.ld` (PVH note, load address 1 MiB, identity mapped) as a
//! non-PIE executable, and refuses to build for any target but `x86_64-unknown-none`.

use std::env;

fn main() {
    let target = env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-none" {
        panic!(
            "testguest is a freestanding guest and must be built for x86_64-unknown-none, not \
             {target}. Cargo reads images/testguest/.cargo/config.toml only when run from \
             images/testguest; from elsewhere use: cargo build --release --manifest-path \
             images/testguest/Cargo.toml --target x86_64-unknown-none"
        );
    }
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    // The target defaults to a static PIE; the 32-bit entry stub and the page tables use
    // absolute addresses, and nothing would apply PIE relocations, so link at fixed addresses.
    println!("cargo:rustc-link-arg-bins=--no-pie");
}
