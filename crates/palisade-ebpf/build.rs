//! Compiles bpf/palisade.bpf.c with clang (-target bpf) into OUT_DIR; the Rust side embeds
//! the object. Needs clang and the libbpf and kernel headers (scripts/setup.sh installs
//! them: clang, libbpf-dev, linux-libc-dev). `CLANG` overrides the compiler.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/palisade.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("palisade.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => panic!("palisade-ebpf: no include path known for target arch {other}"),
    };
    let status = Command::new(&clang)
        // -mcpu=v3: atomic compare-and-swap (the event rate limit), kernels 5.12 and later.
        .args([
            "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3",
        ])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("palisade-ebpf: cannot run {clang} ({e}); install clang (scripts/setup.sh)")
        });
    assert!(
        status.success(),
        "palisade-ebpf: {clang} failed to compile {src}"
    );
}
