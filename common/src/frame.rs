//! Length-prefixed frames over a byte stream (pipe, FIFO, stream socket).
//!
//! A byte stream keeps no message boundaries: two 64-byte writes may come
//! out of one 128-byte read, or in five pieces. So each message goes out as
//!
//! ```text
//! +----------------------+------------------+
//! | length: u32, little- | payload: length  |
//! | endian, 4 bytes      | bytes            |
//! +----------------------+------------------+
//! ```
//!
//! and the reader first reads exactly 4 bytes, then exactly `length` bytes.
//! The outcomes a reader must tell apart:
//!
//! - a frame;
//! - end of stream *at a frame boundary*: the writer closed cleanly;
//! - end of stream *inside* the header or the body: the writer died or
//!   closed mid-message ([`FrameError::TruncatedHeader`], [`FrameError::TruncatedBody`]);
//! - a length over the limit: a broken or hostile writer; rejected before
//!   allocating anything ([`FrameError::TooLong`]).
//!
//! A byte stream also cannot say whether the writer *finished* or was cut
//! off at a frame boundary (killed, Ctrl-C'd): both end with EOF. A writer
//! that wants the difference seen ends with an **end marker**
//! ([`write_end`]): a header whose length is [`END_MARK`] (`0xFFFF_FFFF`,
//! over any frame limit, so an old reader rejects it rather than take it
//! for data), then one ordinary frame of at most [`MAX_END`] bytes saying
//! what the writer sent (e.g. its message count). [`read_frame_or_end`]
//! returns it as [`Frame::End`]; EOF before it means the stream was cut.
//!
//! Short reads and writes are continued and `EINTR` is retried. To stop a
//! blocked read on Ctrl-C, wrap the stream in
//! [`cleanup::StopOnSignal`](crate::cleanup::StopOnSignal), which turns
//! `EINTR` after a stop signal into an error. For a raw file descriptor,
//! use `std::fs::File::from(owned_fd)`: a `File` reads and writes any fd.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Largest payload this module writes or accepts: 16 MiB. A reader that
/// trusted any `u32` would allocate up to 4 GiB because a peer said so.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The length value that marks the end of a stream instead of a frame.
pub const END_MARK: u32 = u32::MAX;

/// Largest payload of an end marker: a count and a tag, not data.
pub const MAX_END: usize = 256;

/// What [`read_frame_or_end`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An ordinary frame's payload.
    Data(Vec<u8>),
    /// The end marker's payload: the writer says it is done.
    End(Vec<u8>),
}

/// Why a frame could not be read or written.
#[derive(Debug)]
pub enum FrameError {
    /// The length is over the limit; nothing was allocated for it.
    TooLong { len: u64, max: usize },
    /// The stream ended after `got` of the 4 header bytes.
    TruncatedHeader { got: usize },
    /// The stream ended after `got` of `expected` payload bytes.
    TruncatedBody { expected: usize, got: usize },
    /// The read or write itself failed (e.g. `EPIPE`: the reader left).
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { len, max } => {
                write!(f, "frame length {len} is over the limit of {max} bytes")
            }
            FrameError::TruncatedHeader { got } => write!(
                f,
                "stream ended inside a frame header ({got} of {HEADER_LEN} bytes): \
                 the writer stopped mid-message"
            ),
            FrameError::TruncatedBody { expected, got } => write!(
                f,
                "stream ended inside a frame ({got} of {expected} bytes): \
                 the writer stopped mid-message"
            ),
            // The io::Error itself is the source (next in the chain), so
            // it is not repeated here.
            FrameError::Io(_) => f.write_str("I/O error"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Write `payload` as one frame.
///
/// Header and payload go to the kernel in one `write_all` call: on a pipe
/// or FIFO a frame of at most `PIPE_BUF` (4096) bytes in total then arrives
/// in one piece even when several writers share the pipe.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLong {
            len: payload.len() as u64,
            max: MAX_FRAME,
        });
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    // `write_all` continues after short writes and retries `EINTR`.
    w.write_all(&frame)?;
    Ok(())
}

/// Read one frame of at most `max` bytes (`max` is capped at [`MAX_FRAME`]).
///
/// `Ok(None)` is a clean end of stream at a frame boundary.
pub fn read_frame<R: Read + ?Sized>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(r, &mut header)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        got => return Err(FrameError::TruncatedHeader { got }),
    }
    read_body(r, header, max).map(Some)
}

/// The payload after `header`, checked against `max` before allocating.
fn read_body<R: Read + ?Sized>(
    r: &mut R,
    header: [u8; HEADER_LEN],
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let max = max.min(MAX_FRAME);
    let len = u32::from_le_bytes(header);
    // Check before allocating: the length came from another process.
    if len as usize > max {
        return Err(FrameError::TooLong {
            len: len.into(),
            max,
        });
    }
    let mut payload = vec![0u8; len as usize];
    let got = read_full(r, &mut payload)?;
    if got < payload.len() {
        return Err(FrameError::TruncatedBody {
            expected: payload.len(),
            got,
        });
    }
    Ok(payload)
}

/// Write the end marker: [`END_MARK`], then `payload` as one frame, all in
/// one `write` (atomic on a pipe: at most [`MAX_END`] + 8 bytes).
pub fn write_end<W: Write + ?Sized>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    if payload.len() > MAX_END {
        return Err(FrameError::TooLong {
            len: payload.len() as u64,
            max: MAX_END,
        });
    }
    let mut marker = Vec::with_capacity(2 * HEADER_LEN + payload.len());
    marker.extend_from_slice(&END_MARK.to_le_bytes());
    marker.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    marker.extend_from_slice(payload);
    w.write_all(&marker)?;
    Ok(())
}

/// Read one frame of at most `max` bytes, or the end marker.
///
/// `Ok(None)` is EOF at a frame boundary: for a writer that sends an end
/// marker, EOF *before* the marker means the stream was cut off.
pub fn read_frame_or_end<R: Read + ?Sized>(
    r: &mut R,
    max: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(r, &mut header)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        got => return Err(FrameError::TruncatedHeader { got }),
    }
    if u32::from_le_bytes(header) == END_MARK {
        // The marker's own frame must follow: EOF here is a cut stream too.
        return match read_frame(r, MAX_END)? {
            Some(payload) => Ok(Some(Frame::End(payload))),
            None => Err(FrameError::TruncatedHeader { got: 0 }),
        };
    }
    read_body(r, header, max).map(|p| Some(Frame::Data(p)))
}

/// A `Read`/`Write` wrapper with an idle timeout: once no byte has moved
/// for `limit`, the next interrupted call fails with `TimedOut` instead of
/// being retried.
///
/// A blocked `read`/`write` has no timeout of its own, so something must
/// interrupt it: a periodic signal installed without `SA_RESTART` (e.g.
/// `common::peer::Ticker`) makes it return `EINTR` (or a short count)
/// every tick; this wrapper then looks at the clock. Without such a
/// signal it never fires.
#[derive(Debug)]
pub struct Idle<T> {
    inner: T,
    limit: Duration,
    last_progress: Instant,
}

/// The error inside the `TimedOut` `io::Error` that [`Idle`] returns.
#[derive(Debug)]
pub struct IdleTimeout(pub Duration);

impl fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the peer made no progress for {} s (--timeout): it is stalled or stopped",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for IdleTimeout {}

impl<T> Idle<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        Idle {
            inner,
            limit,
            last_progress: Instant::now(),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Start the idle clock again (e.g. when a new phase begins).
    pub fn restart(&mut self) {
        self.last_progress = Instant::now();
    }

    /// The `TimedOut` error if `limit` has passed without progress, for a
    /// caller that waits outside `read`/`write` (e.g. in `poll`).
    pub fn check(&self) -> io::Result<()> {
        if self.last_progress.elapsed() >= self.limit {
            return Err(io::Error::new(ErrorKind::TimedOut, IdleTimeout(self.limit)));
        }
        Ok(())
    }

    /// The outcome of one call: progress restarts the clock; an `EINTR`
    /// after `limit` without progress becomes `TimedOut`.
    fn account(&mut self, result: io::Result<usize>) -> io::Result<usize> {
        match &result {
            Ok(n) if *n > 0 => self.last_progress = Instant::now(),
            Err(e) if e.kind() == ErrorKind::Interrupted => self.check()?,
            _ => {}
        }
        result
    }
}

impl<T: Read> Read for Idle<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.inner.read(buf);
        self.account(result)
    }
}

impl<T: Write> Write for Idle<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.inner.write(buf);
        self.account(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Find one complete frame at the start of `buf`, for a reader that
/// collects bytes with non-blocking reads (a `poll` loop cannot block in
/// `read_frame` waiting for the rest of a frame).
///
/// `Ok(None)`: not complete yet, read more. `Ok(Some((payload, used)))`:
/// the payload is `buf[payload]`, and the frame took `used` bytes.
pub fn split_frame(
    buf: &[u8],
    max: usize,
) -> Result<Option<(std::ops::Range<usize>, usize)>, FrameError> {
    let max = max.min(MAX_FRAME);
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*header);
    if len as usize > max {
        return Err(FrameError::TooLong {
            len: len.into(),
            max,
        });
    }
    let end = HEADER_LEN + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((HEADER_LEN..end, end)))
}

/// Read until `buf` is full or the stream ends; returns the bytes read.
/// Unlike `read_exact`, it says how much arrived before the end, which is
/// what tells a clean end from a truncated frame.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break, // end of stream
            Ok(n) => got += n,
            // A signal handler ran while we were blocked: nothing was read,
            // the stream is intact, so simply read again.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    /// Hands out one byte per `read`, and `EINTR` before every byte.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        interrupt_next: bool,
    }

    impl Trickle {
        fn new(data: Vec<u8>) -> Self {
            Trickle {
                data,
                pos: 0,
                interrupt_next: true,
            }
        }
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.interrupt_next {
                self.interrupt_next = false;
                return Err(ErrorKind::Interrupted.into());
            }
            self.interrupt_next = true;
            if self.pos == self.data.len() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.data[self.pos];
            self.pos += 1;
            Ok(1)
        }
    }

    /// Accepts at most 3 bytes per `write`, and `EINTR` every other call.
    struct ShortWriter {
        out: Vec<u8>,
        calls: usize,
    }

    impl Write for ShortWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(3);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn encode(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            write_frame(&mut out, p).unwrap();
        }
        out
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&[b"hello", b"", b"world!"]);
        assert_eq!(&bytes[..4], &5u32.to_le_bytes());
        let mut r = Cursor::new(bytes);
        assert_eq!(read_frame(&mut r, MAX_FRAME).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, MAX_FRAME).unwrap().unwrap(), b"");
        assert_eq!(read_frame(&mut r, MAX_FRAME).unwrap().unwrap(), b"world!");
        assert!(read_frame(&mut r, MAX_FRAME).unwrap().is_none());
    }

    #[test]
    fn one_byte_reads_and_eintr() {
        let mut r = Trickle::new(encode(&[b"abc", b"defgh"]));
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"abc");
        assert_eq!(read_frame(&mut r, 100).unwrap().unwrap(), b"defgh");
        assert!(read_frame(&mut r, 100).unwrap().is_none());
    }

    #[test]
    fn short_writes_and_eintr() {
        let mut w = ShortWriter {
            out: Vec::new(),
            calls: 0,
        };
        write_frame(&mut w, b"a longer payload").unwrap();
        assert_eq!(w.out, encode(&[b"a longer payload"]));
    }

    #[test]
    fn oversize_length_is_rejected_without_allocating() {
        // u32::MAX would be a 4 GiB allocation if trusted.
        let mut r = Cursor::new(u32::MAX.to_le_bytes().to_vec());
        match read_frame(&mut r, MAX_FRAME) {
            Err(FrameError::TooLong { len, max }) => {
                assert_eq!((len, max), (u64::from(u32::MAX), MAX_FRAME));
            }
            other => panic!("expected TooLong, got {other:?}"),
        }
        // The caller's own, smaller limit also holds.
        let mut r = Cursor::new(encode(&[&[0u8; 100]]));
        let err = read_frame(&mut r, 99).unwrap_err();
        assert_eq!(
            err.to_string(),
            "frame length 100 is over the limit of 99 bytes"
        );
        // And the writer refuses to produce one.
        let big = vec![0u8; MAX_FRAME + 1];
        assert!(matches!(
            write_frame(&mut Vec::new(), &big),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn truncation_is_distinct_from_clean_end() {
        let whole = encode(&[b"0123456789"]);
        let mut r = Cursor::new(whole[..2].to_vec());
        assert!(matches!(
            read_frame(&mut r, 100),
            Err(FrameError::TruncatedHeader { got: 2 })
        ));
        let mut r = Cursor::new(whole[..7].to_vec());
        assert!(matches!(
            read_frame(&mut r, 100),
            Err(FrameError::TruncatedBody {
                expected: 10,
                got: 3
            })
        ));
        let mut r = Cursor::new(Vec::new());
        assert!(read_frame(&mut r, 100).unwrap().is_none());
    }

    #[test]
    fn works_over_a_real_pipe() {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let mut writer = std::fs::File::from(write_end);
        let mut reader = std::fs::File::from(read_end);
        write_frame(&mut writer, b"through the kernel").unwrap();
        drop(writer); // closing the only write end gives the reader EOF
        assert_eq!(
            read_frame(&mut reader, 100).unwrap().unwrap(),
            b"through the kernel"
        );
        assert!(read_frame(&mut reader, 100).unwrap().is_none());
    }

    #[test]
    fn split_frame_waits_for_whole_frames() {
        let bytes = encode(&[b"abc", b"de"]);
        for cut in 0..7 {
            assert!(
                split_frame(&bytes[..cut], 100).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let (payload, used) = split_frame(&bytes, 100).unwrap().unwrap();
        assert_eq!((&bytes[payload], used), (&b"abc"[..], 7));
        let (payload, used) = split_frame(&bytes[7..], 100).unwrap().unwrap();
        assert_eq!((&bytes[7..][payload], used), (&b"de"[..], 6));
        assert!(matches!(
            split_frame(&bytes, 2),
            Err(FrameError::TooLong { len: 3, max: 2 })
        ));
    }

    #[test]
    fn end_marker_is_told_from_data_and_from_a_cut() {
        let mut bytes = encode(&[b"one", b"two"]);
        write_end(&mut bytes, &7u64.to_le_bytes()).unwrap();
        let mut r = Cursor::new(bytes.clone());
        assert_eq!(
            read_frame_or_end(&mut r, 100).unwrap(),
            Some(Frame::Data(b"one".to_vec()))
        );
        assert_eq!(
            read_frame_or_end(&mut r, 100).unwrap(),
            Some(Frame::Data(b"two".to_vec()))
        );
        assert_eq!(
            read_frame_or_end(&mut r, 100).unwrap(),
            Some(Frame::End(7u64.to_le_bytes().to_vec()))
        );
        assert_eq!(read_frame_or_end(&mut r, 100).unwrap(), None);
        // A reader that knows no marker refuses it instead of taking it for data.
        let mut r = Cursor::new(bytes[14..].to_vec());
        assert!(matches!(
            read_frame(&mut r, MAX_FRAME),
            Err(FrameError::TooLong { .. })
        ));
        // A marker cut anywhere is an error, never a clean end.
        for cut in 15..bytes.len() {
            let mut r = Cursor::new(bytes[14..cut].to_vec());
            assert!(read_frame_or_end(&mut r, 100).is_err(), "cut {cut}");
        }
        assert!(write_end(&mut Vec::new(), &[0u8; MAX_END + 1]).is_err());
    }

    #[test]
    fn idle_times_out_only_after_the_limit_without_progress() {
        struct Eintr;
        impl Read for Eintr {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(ErrorKind::Interrupted.into())
            }
        }
        let mut idle = Idle::new(Eintr, Duration::from_secs(3600));
        assert_eq!(
            idle.read(&mut [0u8; 1]).unwrap_err().kind(),
            ErrorKind::Interrupted
        );
        let mut idle = Idle::new(Eintr, Duration::ZERO);
        let err = read_frame(&mut idle, 10).unwrap_err();
        assert!(matches!(&err, FrameError::Io(e) if e.kind() == ErrorKind::TimedOut));
        let chain = format!("{:#}", anyhow::Error::new(err));
        assert_eq!(
            chain,
            "I/O error: the peer made no progress for 0 s (--timeout): it is stalled or stopped"
        );
    }

    proptest! {
        #[test]
        fn fuzz_split_frame_agrees_with_read_frame(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            // Whatever the bytes, both decoders see the same first frame
            // (or both see none / an error).
            let split = split_frame(&bytes, 256);
            let read = read_frame(&mut Cursor::new(bytes.clone()), 256);
            match (split, read) {
                (Ok(Some((payload, _))), Ok(Some(frame))) => prop_assert_eq!(&bytes[payload], &frame[..]),
                (Ok(None), Ok(None)) => prop_assert!(bytes.is_empty()),
                (Ok(None), Err(FrameError::TruncatedHeader { .. } | FrameError::TruncatedBody { .. })) => {}
                (Err(FrameError::TooLong { .. }), Err(FrameError::TooLong { .. })) => {}
                (s, r) => prop_assert!(false, "split {s:?} vs read {r:?}"),
            }
        }

        #[test]
        fn fuzz_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                       max in 0usize..4096) {
            let mut r = Cursor::new(bytes);
            // Decode until the end or the first error: every outcome is fine
            // except a panic, or a frame over the limit.
            while let Ok(Some(frame)) = read_frame(&mut r, max) {
                prop_assert!(frame.len() <= max);
            }
        }

        #[test]
        fn round_trips_hold(payloads in proptest::collection::vec(
                                proptest::collection::vec(any::<u8>(), 0..600), 0..20)) {
            let mut stream = Vec::new();
            for p in &payloads {
                write_frame(&mut stream, p).unwrap();
            }
            let mut r = Trickle::new(stream);
            for p in &payloads {
                let got = read_frame(&mut r, MAX_FRAME).unwrap();
                prop_assert_eq!(got.as_deref(), Some(p.as_slice()));
            }
            prop_assert!(read_frame(&mut r, MAX_FRAME).unwrap().is_none());
        }

        #[test]
        fn any_cut_is_clean_or_truncated(payload in proptest::collection::vec(any::<u8>(), 0..100),
                                         cut in 0usize..104) {
            let whole = encode(&[&payload]);
            let cut = cut.min(whole.len());
            let mut r = Cursor::new(whole[..cut].to_vec());
            match read_frame(&mut r, MAX_FRAME) {
                Ok(None) => prop_assert_eq!(cut, 0),
                Ok(Some(p)) => { prop_assert_eq!(cut, whole.len()); prop_assert_eq!(p, payload); }
                Err(FrameError::TruncatedHeader { got }) => prop_assert!(got == cut && cut < HEADER_LEN),
                Err(FrameError::TruncatedBody { got, .. }) => prop_assert_eq!(got, cut - HEADER_LEN),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }
}
