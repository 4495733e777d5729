//! Compiles the C side of the benchmark: c/reference.c (the kernel
//! mechanisms' workload written directly against the system calls) and
//! c/shm_twins.c (the shared-memory rings written again in C), both using
//! c/payload.h, measured in the same run as the Rust rows.
//!
//! -O3, as Rust's release profile (opt-level 3): the payload's fill and
//! check loops are much of the work at large sizes (all of it in shared
//! memory), and GCC vectorises them only from -O3, as LLVM does Rust's. At
//! -O2 the C side would lose for a reason that is not the mechanism.
fn main() {
    for file in ["c/reference.c", "c/shm_twins.c", "c/payload.h"] {
        println!("cargo::rerun-if-changed={file}");
    }
    cc::Build::new()
        .file("c/reference.c")
        .file("c/shm_twins.c")
        .opt_level(3)
        .warnings(true)
        .compile("ipc_reference");
}
