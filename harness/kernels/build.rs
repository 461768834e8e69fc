//! Sets `x86_kernels`, which compiles the AVX2 and AVX-512 code paths: on x86-64, unless
//! `ATSO_PORTABLE_ONLY` is set. With it the crate builds as on a CPU without x86-64 intrinsics
//! (portable code only, the detection helpers without their x86 branch), so `.ci/run` can check
//! and test that build with `-D warnings` on an x86 machine: the nearest to an aarch64 build
//! these machines can run (they have no aarch64 standard library).

fn main() {
    println!("cargo:rustc-check-cfg=cfg(x86_kernels)");
    println!("cargo:rerun-if-env-changed=ATSO_PORTABLE_ONLY");
    let x86_64 = std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    if x86_64 && std::env::var_os("ATSO_PORTABLE_ONLY").is_none() {
        println!("cargo:rustc-cfg=x86_kernels");
    }
}
