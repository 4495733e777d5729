//! The shared-memory ring of shm-demo, as a library: `ipc-bench` measures
//! the same code the demo runs. The demo itself is `main.rs`.

pub mod ring;
