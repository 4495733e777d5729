//! The C twins of the shared-memory rows (c/shm_twins.c). For the kernel
//! mechanisms c/reference.c shows Rust costs nothing, because the kernel
//! sets the speed; in shared memory our own code sets it. So each ring is
//! written again in C, same layout, same waits, same atomic orderings, same
//! payload and checks, and run in the same cell as the Rust row: its
//! "Rust ÷ C" figure is then measured, not assumed.
//!
//! - shm-sem: shm-demo's ring (`shm_demo::ipc_ring`) with its two POSIX
//!   semaphores, driven as `transport`'s RingTx/RingRx drive it: messages
//!   over a slot are split over several, the receiver copies each piece out.
//! - shm-spsc: `transport`'s lock-free SPSC byte ring, checked in place.
//! - shm-futex, shm-futex-yield, shm-futex-spin: shm-demo's futex ring
//!   (`shm_demo::ipc_futex`) with each of its waiting strategies; a message
//!   that fits a slot is checked in place, a larger one copied together.
//!
//! The twin's sending child runs on the CPU ipc-bench pins its own children
//! to, and the receiving parent stays on ours: C and Rust run on the same
//! two CPUs. (reference.c's processes are left unpinned instead: its child
//! would inherit our CPU and share it.)

use anyhow::{Result, bail};

use shm_demo::ipc_futex::Strategy;

use crate::system::{self, Pinning};
use crate::transport::{Mech, SHM_SEM_SLOT_SIZE, SHM_SEM_SLOTS};

/// "Has a stop signal arrived?", for the C side (a nullable C function
/// pointer; it may be called in the forked child too, which has its own
/// copy of the flag its own handler sets).
type Stop = Option<extern "C" fn() -> libc::c_int>;

extern "C" fn stop_requested() -> libc::c_int {
    libc::c_int::from(common::cleanup::stop_requested().is_some())
}

unsafe extern "C" {
    /// shm-demo's ring of `slots` slots of `slot_size` bytes: seconds from
    /// the first timed message checked to the last, -1 failure (message on
    /// stderr), -2 a size it cannot carry. The sending child moves to
    /// `child_cpu` (-1: stays where the scheduler puts it); `stop` is asked
    /// where the Rust ring calls check_stop.
    fn ipc_c_shm_sem(
        size: usize,
        warm: u64,
        count: u64,
        slots: u32,
        slot_size: u32,
        child_cpu: libc::c_int,
        stop: Stop,
    ) -> f64;
    /// The SPSC byte ring, same contract.
    fn ipc_c_shm_spsc(
        size: usize,
        warm: u64,
        count: u64,
        child_cpu: libc::c_int,
        stop: Stop,
    ) -> f64;
    /// shm-demo's futex ring, both sides waiting by `strategy`
    /// (`Strategy::code`: 1 spin, 2 spin then yield, 3 spin then FUTEX_WAIT).
    fn ipc_c_shm_futex(
        size: usize,
        warm: u64,
        count: u64,
        slots: u32,
        slot_size: u32,
        strategy: libc::c_int,
        child_cpu: libc::c_int,
        stop: Stop,
    ) -> f64;
    /// The C side's `spsc_capacity` and `segment_len`, and where its header
    /// keeps the semaphores (0: empty, 1: full), for the layout tests.
    #[cfg(test)]
    fn ipc_c_spsc_capacity(size: usize) -> usize;
    #[cfg(test)]
    fn ipc_c_ring_segment_len(slots: u32, slot_size: u32) -> usize;
    #[cfg(test)]
    fn ipc_c_ring_sem_offset(which: libc::c_int) -> usize;
    #[cfg(test)]
    fn ipc_c_futex_segment_len(slots: u32, slot_size: u32) -> usize;
    #[cfg(test)]
    fn ipc_c_futex_spin_micros() -> libc::c_int;
    #[cfg(test)]
    fn ipc_c_futex_spin_batch() -> libc::c_int;
    /// payload.h's `fill_at`, for the test that compares it with Rust's.
    #[cfg(test)]
    fn ipc_c_payload_fill_at(seq: u64, size: usize, offset: usize, buf: *mut u8, len: usize);
}

/// Whether the twin also carries the sizes the Rust row splits: the slots
/// of shm-sem's and the futex ring split a message in C exactly as in Rust,
/// so those cells compare like with like (the kernel queues' split cells
/// have no C twin).
pub fn carries_split(mech: Mech) -> bool {
    strategy(mech).is_some() || mech == Mech::ShmSem
}

/// The futex ring's waiting strategy of a row, if it is one of its rows.
/// (shm-memfd, the futex ring in a sealed memfd, has no twin.)
fn strategy(mech: Mech) -> Option<Strategy> {
    match mech {
        Mech::ShmFutex => Some(Strategy::SpinFutex),
        Mech::ShmFutexYield => Some(Strategy::SpinYield),
        Mech::ShmFutexSpin => Some(Strategy::Spin),
        _ => None,
    }
}

/// The CPU of ipc-bench's pinned children, or -1 if it does not pin.
fn child_cpu() -> libc::c_int {
    match system::pinning() {
        Pinning::Pinned { child, .. } => *child as libc::c_int,
        Pinning::Unpinned(_) => -1,
    }
}

/// Seconds of the C twin of `mech` for `count` messages of `size` bytes
/// after `warm` untimed ones; `None` if `mech` has no twin or the twin
/// cannot carry the size.
pub fn seconds(mech: Mech, size: usize, warm: u64, count: u64) -> Result<Option<f64>> {
    let seconds = match mech {
        // SAFETY: the twin forks; its child calls no malloc and no stdio
        // stream (safe even forked from a multi-threaded process), and
        // `stop_requested` only loads an atomic; the child ends with _exit. It uses only its own mapping, semaphores and pipe, and
        // kills and reaps its child before returning.
        Mech::ShmSem => unsafe {
            ipc_c_shm_sem(
                size,
                warm,
                count,
                SHM_SEM_SLOTS,
                SHM_SEM_SLOT_SIZE,
                child_cpu(),
                Some(stop_requested),
            )
        },
        // SAFETY: as above, with its own mapping and pipe.
        Mech::ShmSpsc => unsafe {
            ipc_c_shm_spsc(size, warm, count, child_cpu(), Some(stop_requested))
        },
        _ => match strategy(mech) {
            // SAFETY: as above, with its own mapping and pipe.
            Some(strategy) => unsafe {
                ipc_c_shm_futex(
                    size,
                    warm,
                    count,
                    SHM_SEM_SLOTS,
                    SHM_SEM_SLOT_SIZE,
                    strategy.code() as libc::c_int,
                    child_cpu(),
                    Some(stop_requested),
                )
            },
            None => return Ok(None),
        },
    };
    if seconds == -2.0 {
        return Ok(None);
    }
    if seconds < 0.0 {
        // Stopped by Ctrl-C (or SIGTERM, SIGHUP): reported as any stop is.
        common::cleanup::check_stop()?;
        bail!("the C twin of {} at {size} bytes failed", mech.name());
    }
    Ok(Some(seconds))
}

/// MB/s of the C twin, timed like the Rust cells (and reference.c): over
/// the `count - 1` messages from the first timed one to the last.
pub fn reference(mech: Mech, size: usize, (warm, count): (u64, u64)) -> Result<Option<f64>> {
    Ok(seconds(mech, size, warm, count)?
        .map(|s| ((count - 1) * size as u64) as f64 / s.max(1e-9) / 1e6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::spsc_capacity;
    use shm_demo::ipc_ring::{self as ring, Header};

    #[test]
    fn the_c_ring_has_the_rust_layout() {
        for (slots, size) in [(1, 1), (16, 65536), (8, 4096), (3, 100), (1024, 1 << 20)] {
            // SAFETY: pure arithmetic in C.
            let c = unsafe { ipc_c_ring_segment_len(slots, size) };
            assert_eq!(c, ring::segment_len(slots, size), "{slots} x {size}");
        }
        // SAFETY: offsetof in C.
        let (empty, full) = unsafe { (ipc_c_ring_sem_offset(0), ipc_c_ring_sem_offset(1)) };
        assert_eq!(empty, std::mem::offset_of!(Header, empty));
        assert_eq!(full, std::mem::offset_of!(Header, full));
    }

    #[test]
    fn the_c_futex_ring_has_the_rust_layout_and_spin_bound() {
        use shm_demo::ipc_futex as futex;
        for (slots, size) in [(1, 1), (16, 65536), (8, 4096), (3, 100), (1024, 1 << 20)] {
            // SAFETY: pure arithmetic in C.
            let c = unsafe { ipc_c_futex_segment_len(slots, size) };
            assert_eq!(c, futex::segment_len(slots, size), "{slots} x {size}");
        }
        // SAFETY: returns a constant.
        let micros = unsafe { ipc_c_futex_spin_micros() };
        assert_eq!(micros as u128, futex::SPIN_TIME.as_micros());
        // SAFETY: returns a constant.
        let batch = unsafe { ipc_c_futex_spin_batch() };
        assert_eq!(batch as u32, futex::SPIN_BATCH);
        // The strategy codes the C side switches on.
        let codes: Vec<u32> = Strategy::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, [1, 2, 3]);
        assert_eq!(Strategy::Spin.code(), 1);
        assert_eq!(Strategy::SpinFutex.code(), 3);
    }

    #[test]
    fn the_c_spsc_ring_has_the_rust_capacity() {
        let sizes = [
            1,
            64,
            4096,
            65536,
            1 << 20,
            (4 << 20) - 4,
            4 << 20,
            5 << 20,
            16 << 20,
        ];
        for size in sizes.into_iter().chain((0..64).map(|k| (4 << 20) - 32 + k)) {
            // SAFETY: pure arithmetic in C.
            let c = unsafe { ipc_c_spsc_capacity(size) };
            assert_eq!(c, spsc_capacity(size), "{size}");
        }
    }

    #[test]
    fn the_c_payload_is_the_rust_payload() {
        for (seq, size) in [
            (0, 1),
            (7, 8),
            (9, 13),
            (3, 64),
            (1 << 40, 1000),
            (u64::MAX, 4099),
        ] {
            let whole = common::payload::make(seq, size);
            // Pieces of every length from every offset of the first 40 bytes.
            for offset in (0..size).take(40) {
                for len in [1, 3, 8, 9, size - offset] {
                    let len = len.min(size - offset);
                    let mut c = vec![0u8; len];
                    // SAFETY: `c` has `len` writable bytes.
                    unsafe { ipc_c_payload_fill_at(seq, size, offset, c.as_mut_ptr(), len) };
                    assert_eq!(
                        c,
                        whole[offset..offset + len],
                        "{seq} {size} {offset} {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_twin_carries_and_checks_small_whole_and_split_sizes() {
        // 64 B, a whole 64 KiB slot, and one split over three slots (and
        // one that ends inside a word) for shm-sem.
        let rows = [
            Mech::ShmSem,
            Mech::ShmSpsc,
            Mech::ShmFutex,
            Mech::ShmFutexYield,
            Mech::ShmFutexSpin,
        ];
        for mech in rows {
            for size in [1, 64, 65536, 3 * 65536 - 5] {
                let s = seconds(mech, size, 40, 50).unwrap().expect("carried");
                assert!(s > 0.0, "{} at {size}: {s}", mech.name());
            }
        }
        assert!(seconds(Mech::Pipe, 64, 1, 2).unwrap().is_none());
        assert!(seconds(Mech::ShmMemfd, 64, 1, 2).unwrap().is_none());
    }
}
