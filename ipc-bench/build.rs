//! Compiles the C side of the benchmark: c/reference.c (the kernel
//! mechanisms' workload written directly against the system calls) and
//! c/shm_twins.c (the shared-memory rings written again in C), both using
//! c/payload.h, measured in the same run as the Rust rows.
fn main() {
    for file in ["c/reference.c", "c/shm_twins.c", "c/payload.h"] {
        println!("cargo::rerun-if-changed={file}");
    }
    cc::Build::new()
        .file("c/reference.c")
        .file("c/shm_twins.c")
        .opt_level(2)
        .warnings(true)
        .compile("ipc_reference");
}
