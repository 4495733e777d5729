//! Compiles the C reference (c/reference.c): the same workload written
//! directly against the system calls, measured in the same run.
fn main() {
    println!("cargo::rerun-if-changed=c/reference.c");
    cc::Build::new()
        .file("c/reference.c")
        .opt_level(2)
        .warnings(true)
        .compile("ipc_reference");
}
