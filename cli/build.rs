//! Link-time layout of the `pgha` binary (release builds on x86_64 Linux, where rustc links
//! with LLD).
//!
//! - `link/pooler-text.order` lists the functions a running pooler executes, hottest first
//!   (written by `scripts/order-pooler-text`). LLD puts them at the start of `.text`, so the
//!   pooler's code sits on a few hundred contiguous pages instead of being spread over the
//!   whole 15 MB of agent, backup and client-library code, each touched function faulting in
//!   64 kB around it. Names the binary no longer has (after a dependency or compiler update)
//!   are skipped: the layout degrades to the default, nothing breaks.
//! - `-z pack-relative-relocs` stores the position-independent executable's relative
//!   relocations compactly (DT_RELR, glibc 2.36+), so the loader reads a few kB at start
//!   instead of 600 kB.

fn main() {
    let order = std::path::Path::new("link/pooler-text.order");
    println!("cargo:rerun-if-changed={}", order.display());
    let target = std::env::var("TARGET").unwrap_or_default();
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if target != "x86_64-unknown-linux-gnu" || !release {
        return;
    }
    println!("cargo:rustc-link-arg-bin=pgha=-Wl,-z,pack-relative-relocs");
    if let Ok(path) = order.canonicalize() {
        println!("cargo:rustc-link-arg-bin=pgha=-Wl,--symbol-ordering-file={}", path.display());
        println!("cargo:rustc-link-arg-bin=pgha=-Wl,--no-warn-symbol-ordering");
    }
}
