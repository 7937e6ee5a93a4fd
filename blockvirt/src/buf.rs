//! Owned, aligned I/O buffers.
//!
//! Every buffer starts on an [`IO_ALIGN`] boundary so leaves can hand it to
//! `O_DIRECT` and io_uring without a bounce copy. Buffers are owned, not
//! borrowed: an operation takes the buffer and gives it back (even on error),
//! which lets an io_uring thread hold it while the kernel works and lets a
//! mirror retry on another leg.
//!
//! - [`IoBufMut`] is an exclusive, writable view: reads fill it.
//! - [`IoBuf`] is a shared, read-only view: writes send it, and cloning or
//!   slicing it is cheap, so one buffer can go to several children at once.
//!
//! Both are views into one reference-counted allocation. An `IoBufMut` can be
//! split into disjoint pieces (one per child device) and joined again, so a
//! read that spans extents fills one client buffer without copying.

use std::alloc::{self, Layout};
use std::io;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut, Range};
use std::ptr::NonNull;
use std::sync::Arc;

use tokio::io::{AsyncRead, ReadBuf};

/// Alignment of every buffer, and the largest sector size leaves honour.
pub const IO_ALIGN: usize = 4096;

struct Allocation {
    ptr: NonNull<u8>,
    capacity: usize,
}

// SAFETY: the allocation is plain memory; access is coordinated by the views
// (disjoint mutable views, read-only shared views), never through this type.
unsafe impl Send for Allocation {}
// SAFETY: as above.
unsafe impl Sync for Allocation {}

impl Allocation {
    fn zeroed(len: usize) -> Arc<Self> {
        Self::new(len, true)
    }

    /// An allocation whose bytes are uninitialized: only
    /// [`IoBufMut::read_exact_from`] and [`IoBuf::concat`] use it, and they
    /// hand out no view before every byte is written.
    fn uninit(len: usize) -> Arc<Self> {
        Self::new(len, false)
    }

    fn new(len: usize, zeroed: bool) -> Arc<Self> {
        if len == 0 {
            return Arc::new(Allocation {
                ptr: NonNull::dangling(),
                capacity: 0,
            });
        }
        let layout = Layout::from_size_align(len, IO_ALIGN).expect("buffer size overflows");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe {
            if zeroed {
                alloc::alloc_zeroed(layout)
            } else {
                alloc::alloc(layout)
            }
        };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::handle_alloc_error(layout)
        };
        Arc::new(Allocation { ptr, capacity: len })
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if self.capacity > 0 {
            let layout = Layout::from_size_align(self.capacity, IO_ALIGN).expect("valid layout");
            // SAFETY: allocated in `zeroed` with this exact layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// An exclusive, writable view of an aligned allocation.
///
/// Invariant: no other live view (mutable or shared) overlaps this one.
pub struct IoBufMut {
    alloc: Arc<Allocation>,
    start: usize,
    len: usize,
}

impl IoBufMut {
    /// A zero-filled buffer of `len` bytes, aligned to [`IO_ALIGN`].
    pub fn zeroed(len: usize) -> Self {
        IoBufMut {
            alloc: Allocation::zeroed(len),
            start: 0,
            len,
        }
    }

    /// Reads exactly `len` bytes from `reader` into a new aligned buffer.
    ///
    /// Unlike `zeroed` followed by `read_exact`, the memory is not zeroed
    /// first: the bytes are read straight into the uninitialized allocation
    /// (a 1 MiB NBD write payload spent a quarter of the server's CPU in
    /// that memset). No view exists before every byte has been read; on an
    /// error or end of file the allocation is dropped unseen.
    pub async fn read_exact_from<R>(reader: &mut R, len: usize) -> io::Result<IoBufMut>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let alloc = Allocation::uninit(len);
        // SAFETY: the allocation holds `capacity == len` bytes (or is empty
        // and dangling, which is a valid empty slice); `alloc` is its only
        // reference, so this slice is the only access to it until it ends.
        // `MaybeUninit` makes no claim that the bytes are initialized.
        let space: &mut [MaybeUninit<u8>] =
            unsafe { std::slice::from_raw_parts_mut(alloc.ptr.as_ptr().cast(), len) };
        let mut read_buf = ReadBuf::uninit(space);
        while read_buf.remaining() > 0 {
            let before = read_buf.filled().len();
            std::future::poll_fn(|cx| {
                std::pin::Pin::new(&mut *reader).poll_read(cx, &mut read_buf)
            })
            .await?;
            // A reader (in safe code) could replace the ReadBuf with one over
            // other, 'static memory; then "filled" would say nothing about
            // this allocation. tokio-util's poll_read_buf checks the same.
            assert!(
                std::ptr::eq(read_buf.filled().as_ptr(), alloc.ptr.as_ptr()),
                "the reader swapped the ReadBuf"
            );
            if read_buf.filled().len() == before {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end of stream before the whole buffer was read",
                ));
            }
        }
        // `ReadBuf` only counts a byte as filled once it was written (its
        // safe API cannot mark uninitialized bytes filled), and the loop
        // ends only when all `len` bytes are: the view below sees
        // initialized memory only.
        Ok(IoBufMut {
            alloc,
            start: 0,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Splits off the first `at` bytes and returns them; `self` keeps the rest.
    pub fn split_to(&mut self, at: usize) -> IoBufMut {
        assert!(at <= self.len, "split_to({at}) past the end ({})", self.len);
        let head = IoBufMut {
            alloc: self.alloc.clone(),
            start: self.start,
            len: at,
        };
        self.start += at;
        self.len -= at;
        head
    }

    /// Joins `next`, which must be the piece directly after `self` in the same
    /// allocation (the inverse of [`split_to`](Self::split_to)).
    pub fn unsplit(&mut self, next: IoBufMut) {
        assert!(
            Arc::ptr_eq(&self.alloc, &next.alloc) && self.start + self.len == next.start,
            "unsplit of buffers that are not adjacent pieces of one allocation"
        );
        self.len += next.len;
    }

    /// Turns this view into a shared, read-only one over the same bytes.
    pub fn freeze(self) -> IoBuf {
        IoBuf {
            alloc: self.alloc,
            start: self.start,
            len: self.len,
        }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: start is within the allocation (start <= capacity).
        unsafe { self.alloc.ptr.as_ptr().add(self.start) }
    }

    /// True when both the address and the length suit `O_DIRECT`.
    pub fn is_aligned(&self) -> bool {
        self.start.is_multiple_of(IO_ALIGN) && self.len.is_multiple_of(IO_ALIGN)
    }
}

impl Deref for IoBufMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the range lies within the allocation and no mutable view
        // overlaps it (type invariant).
        unsafe { std::slice::from_raw_parts(self.alloc.ptr.as_ptr().add(self.start), self.len) }
    }
}

impl DerefMut for IoBufMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: the range lies within the allocation and this view is the
        // only one over it (type invariant); `&mut self` makes it exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.alloc.ptr.as_ptr().add(self.start), self.len) }
    }
}

impl std::fmt::Debug for IoBufMut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBufMut({} bytes)", self.len)
    }
}

/// A shared, read-only view of an aligned allocation. Cheap to clone and slice.
#[derive(Clone)]
pub struct IoBuf {
    alloc: Arc<Allocation>,
    start: usize,
    len: usize,
}

impl IoBuf {
    /// An aligned copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> Self {
        IoBuf::concat(&[bytes])
    }

    /// An aligned copy of `parts`, one after another. The memory is not
    /// zeroed first: every byte is copied over before anything sees it.
    pub fn concat(parts: &[&[u8]]) -> Self {
        let len = parts.iter().map(|part| part.len()).sum();
        let alloc = Allocation::uninit(len);
        let mut at = 0;
        for part in parts {
            // SAFETY: `at + part.len() <= len`, the allocation's size;
            // `alloc` is new, so nothing else refers to its bytes, and a
            // caller's slice cannot overlap them.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    part.as_ptr(),
                    alloc.ptr.as_ptr().add(at),
                    part.len(),
                );
            }
            at += part.len();
        }
        // Every one of the `len` bytes was written above.
        IoBuf {
            alloc,
            start: 0,
            len,
        }
    }

    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        IoBufMut::zeroed(len).freeze()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A view of `range` (relative to this view) sharing the same allocation.
    pub fn slice(&self, range: Range<usize>) -> IoBuf {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "slice {range:?} out of a {}-byte buffer",
            self.len
        );
        IoBuf {
            alloc: self.alloc.clone(),
            start: self.start + range.start,
            len: range.end - range.start,
        }
    }

    pub fn as_ptr(&self) -> *const u8 {
        // SAFETY: start is within the allocation.
        unsafe { self.alloc.ptr.as_ptr().add(self.start) }
    }

    /// True when both the address and the length suit `O_DIRECT`.
    pub fn is_aligned(&self) -> bool {
        self.start.is_multiple_of(IO_ALIGN) && self.len.is_multiple_of(IO_ALIGN)
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the range lies within the allocation; no mutable view
        // overlaps a shared one (an IoBufMut becomes an IoBuf only by value).
        unsafe { std::slice::from_raw_parts(self.alloc.ptr.as_ptr().add(self.start), self.len) }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        let buf = IoBufMut::zeroed(3 * IO_ALIGN);
        assert_eq!(buf.as_ref().as_ptr() as usize % IO_ALIGN, 0);
        assert!(buf.iter().all(|&b| b == 0));
        assert!(buf.is_aligned());
    }

    #[test]
    fn split_fill_and_unsplit_round_trip() {
        let mut buf = IoBufMut::zeroed(4 * IO_ALIGN);
        let mut head = buf.split_to(IO_ALIGN);
        let mut mid = buf.split_to(2 * IO_ALIGN);
        head.fill(1);
        mid.fill(2);
        buf.fill(3);
        head.unsplit(mid);
        head.unsplit(buf);
        assert_eq!(head.len(), 4 * IO_ALIGN);
        assert!(head[..IO_ALIGN].iter().all(|&b| b == 1));
        assert!(head[IO_ALIGN..3 * IO_ALIGN].iter().all(|&b| b == 2));
        assert!(head[3 * IO_ALIGN..].iter().all(|&b| b == 3));
    }

    #[test]
    #[should_panic(expected = "not adjacent")]
    fn unsplit_rejects_foreign_pieces() {
        let mut a = IoBufMut::zeroed(IO_ALIGN);
        let b = IoBufMut::zeroed(IO_ALIGN);
        a.unsplit(b);
    }

    #[test]
    fn frozen_slices_share_bytes() {
        let buf = IoBuf::copy_from(&[7u8; 8192]);
        let tail = buf.slice(4096..8192);
        assert_eq!(tail.len(), 4096);
        assert!(tail.is_aligned());
        assert!(tail.iter().all(|&b| b == 7));
        assert!(!buf.slice(1..4097).is_aligned());
    }

    #[test]
    fn concat_copies_every_part_in_order() {
        let parts: [&[u8]; 4] = [b"abc", b"", &[7u8; IO_ALIGN], b"z"];
        let buf = IoBuf::concat(&parts);
        assert_eq!(buf.as_ref().as_ptr() as usize % IO_ALIGN, 0);
        assert_eq!(&buf[..], &parts.concat()[..]);
        assert!(IoBuf::concat(&[]).is_empty());
        assert_eq!(&IoBuf::copy_from(b"xyz")[..], b"xyz");
    }

    #[tokio::test]
    async fn read_exact_from_fills_the_whole_buffer() {
        let bytes: Vec<u8> = (0..3 * IO_ALIGN + 100).map(|i| (i % 251) as u8).collect();
        // Small chunks: the read takes many polls.
        let mut reader = tokio::io::BufReader::with_capacity(1000, &bytes[..]);
        let buf = IoBufMut::read_exact_from(&mut reader, 3 * IO_ALIGN)
            .await
            .expect("read");
        assert_eq!(buf.as_ref().as_ptr() as usize % IO_ALIGN, 0);
        assert_eq!(&buf[..], &bytes[..3 * IO_ALIGN]);
        let rest = IoBufMut::read_exact_from(&mut reader, 100)
            .await
            .expect("read");
        assert_eq!(&rest[..], &bytes[3 * IO_ALIGN..]);
        let empty = IoBufMut::read_exact_from(&mut reader, 0)
            .await
            .expect("empty read");
        assert!(empty.is_empty());
    }

    /// A reader that swaps the caller's `ReadBuf` for one over memory of
    /// its own, claiming it full.
    struct Swapper;

    impl AsyncRead for Swapper {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let other: &'static mut [u8] = Box::leak(vec![0u8; buf.remaining()].into_boxed_slice());
            let mut swapped = ReadBuf::new(other);
            swapped.advance(swapped.remaining());
            *buf = swapped;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    #[should_panic(expected = "swapped the ReadBuf")]
    async fn read_exact_from_refuses_a_swapped_read_buf() {
        let _ = IoBufMut::read_exact_from(&mut Swapper, IO_ALIGN).await;
    }

    #[tokio::test]
    async fn read_exact_from_fails_at_end_of_stream() {
        let bytes = [1u8; 100];
        let err = IoBufMut::read_exact_from(&mut &bytes[..], IO_ALIGN)
            .await
            .expect_err("short stream");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn empty_buffers_work() {
        let mut buf = IoBufMut::zeroed(0);
        assert!(buf.is_empty());
        let none = buf.split_to(0);
        assert!(none.is_empty());
        assert!(buf.freeze().is_empty());
    }
}
