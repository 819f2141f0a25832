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
//!
//! Other targets, debug builds, compilers before 1.90 and a linker chosen in RUSTFLAGS get
//! the default layout.

fn main() {
    let order = std::path::Path::new("link/pooler-text.order");
    println!("cargo:rerun-if-changed={}", order.display());
    let target = std::env::var("TARGET").unwrap_or_default();
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if target != "x86_64-unknown-linux-gnu" || !release || !links_with_default_lld() {
        return;
    }
    println!("cargo:rustc-link-arg-bin=pgha=-Wl,-z,pack-relative-relocs");
    if let Ok(path) = order.canonicalize() {
        println!("cargo:rustc-link-arg-bin=pgha=-Wl,--symbol-ordering-file={}", path.display());
        println!("cargo:rustc-link-arg-bin=pgha=-Wl,--no-warn-symbol-ordering");
    }
}

/// rustc links x86_64 Linux binaries with its own LLD from 1.90 on; before that (this crate
/// builds from 1.80) the system linker may not know `--symbol-ordering-file`. A linker chosen
/// in RUSTFLAGS is left alone too.
fn links_with_default_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let minor = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| {
            let release = text.lines().find_map(|l| l.strip_prefix("release: "))?.to_string();
            let mut parts = release.split('.');
            (parts.next()? == "1").then_some(())?;
            parts.next()?.parse::<u32>().ok()
        });
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let own_linker = ["linker", "fuse-ld", "link-self-contained"].iter().any(|f| flags.contains(f));
    minor.is_some_and(|m| m >= 90) && !own_linker
}
