//! Builds the TC programs in `dataplane-ebpf/ebpf` for the BPF target with aya-build (nightly,
//! `-Z build-std=core`, bpf-linker) and leaves the object at `$OUT_DIR/palisade-tc`, which
//! `src/ebpf.rs` embeds. `scripts/setup.sh` installs what this needs. With `AYA_BUILD_SKIP=1`
//! the object is left empty and the eBPF dataplane refuses to start, saying so.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.join("..").join("dataplane-ebpf");
    let ebpf = root.join("ebpf");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    for dir in [ebpf.join("src"), root.join("common").join("src")] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.join("Cargo.lock").display()
    );
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v == "true");
    if skip {
        std::fs::write(out.join("palisade-tc"), b"").expect("write the placeholder object");
    }
    if !skip {
        if let Some(missing) = missing_tools() {
            panic!(
                "building the eBPF programs needs {missing}; run scripts/setup.sh once (it installs \
                 them), or set AYA_BUILD_SKIP=1 to build without the eBPF dataplane"
            );
        }
    }
    // aya-build runs `cargo build --package palisade-ebpf` in the current directory; the eBPF
    // crate is its own workspace (it builds only for the BPF target).
    std::env::set_current_dir(&ebpf).expect("dataplane-ebpf/ebpf exists");
    // aya-build echoes the inner cargo's stderr as warnings: keep it to what matters.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    let package = aya_build::Package {
        name: "palisade-ebpf",
        root_dir: ebpf.to_str().expect("a UTF-8 path"),
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        panic!("building the eBPF programs failed: {e:#}");
    }
}

/// What the eBPF build needs that this machine lacks, if anything.
fn missing_tools() -> Option<&'static str> {
    let ok = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ok("bpf-linker", &["--version"]) {
        return Some("bpf-linker");
    }
    if !ok("rustup", &["run", "nightly", "rustc", "--version"]) {
        return Some("the nightly toolchain");
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    let src = PathBuf::from(sysroot).join("lib/rustlib/src/rust/library/core");
    if !src.exists() {
        return Some("rust-src for the nightly toolchain");
    }
    None
}
