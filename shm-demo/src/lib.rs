//! The library half of shm-demo. It exists for `ipc-bench`, which measures
//! the rings this demo runs (`ipc_ring`: the semaphore ring; `ipc_futex`:
//! the futex ring; each with its layout, `Writer`, `Reader`) in an
//! anonymous shared mapping of its own. The ring calls the checks in
//! `checks` (the `sem_t` guard, peer liveness), so they are here too. The
//! demo itself starts in `main.rs`, which uses both as `shm_demo::...`.

pub mod checks;
pub mod ipc_futex;
pub mod ipc_ring;
