//! An io_uring engine: one ring on one dedicated thread, shared by every
//! open file of the process.
//!
//! ```text
//!  async tasks ──push──▶ queue ──▶ ring thread ──SQE──▶ kernel
//!       ▲      (eventfd wakes it)        │◀──CQE──────────┘
//!       └────────── oneshot reply ───────┘
//! ```
//!
//! One ring for all files, rather than one per file, because a redundant
//! write fans out to several PVs at once: one thread then wakes once for
//! the whole row and reaps its completions in one batch, where a thread
//! per PV cost a wake and a reply crossing per member.
//!
//! The ring is made on its own thread with `SINGLE_ISSUER` and
//! `DEFER_TASKRUN` (where the kernel has them): only that thread ever
//! submits, so the kernel runs completion work when the thread asks for
//! completions, in one batch, instead of interrupting it for each one.
//!
//! The eventfd is written only when the ring thread said, under the queue
//! lock, that it is about to wait: a thread that is awake drains the queue
//! before it waits again, so a write then would only cost a syscall and a
//! spurious wake-read completion.
//!
//! Each request owns its buffer. The ring thread keeps the request (and so
//! the buffer) until the kernel posts its completion, so a caller that stops
//! waiting can never free memory the kernel is still writing into. Short
//! transfers are resubmitted for the remainder; a zero-byte transfer is an
//! error. Each request holds its file open until it completes. The thread
//! lives as long as the process.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use io_uring::{opcode, types, IoUring};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::buf::{IoBuf, IoBufMut};

const RING_ENTRIES: u32 = 1024;
const WAKE_TOKEN: u64 = u64::MAX;

pub(crate) type Reply<B> = oneshot::Sender<(io::Result<()>, B)>;

/// One operation handed to the ring thread.
pub(crate) enum Request {
    Read {
        offset: u64,
        buf: IoBufMut,
        reply: Reply<IoBufMut>,
    },
    Write {
        offset: u64,
        buf: IoBuf,
        dsync: bool,
        reply: Reply<IoBuf>,
    },
    Fdatasync {
        reply: oneshot::Sender<io::Result<()>>,
    },
    Fallocate {
        mode: i32,
        offset: u64,
        len: u64,
        reply: oneshot::Sender<io::Result<()>>,
    },
}

/// A request and the file it works on.
struct Queued {
    file: Arc<File>,
    request: Request,
}

struct InFlight {
    file: Arc<File>,
    request: Request,
    /// Bytes already transferred (reads and writes are resubmitted when short).
    done: usize,
}

struct Shared {
    queue: Mutex<VecDeque<Queued>>,
    wake: OwnedFd,
    /// Set by the ring thread, with the queue lock held and the queue
    /// found empty (or the ring full), just before it waits in the kernel;
    /// cleared by the first submitter that then writes the eventfd.
    sleeping: AtomicBool,
    /// Set (under the queue lock) once the ring failed for good: new
    /// requests are refused at once instead of waiting forever.
    dead: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own. A
        // failure (counter overflow) cannot happen at our rates and would
        // only delay, not lose, the request: the ring thread also drains the
        // queue whenever any completion arrives.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// Handle to the ring thread.
pub(crate) struct Ring {
    shared: Arc<Shared>,
}

impl Ring {
    /// The process's ring, started on first use. An error (a kernel without
    /// io_uring, or one that forbids it) is remembered and returned again.
    pub(crate) fn process_wide() -> io::Result<&'static Ring> {
        static RING: OnceLock<Result<Ring, (io::ErrorKind, String)>> = OnceLock::new();
        RING.get_or_init(|| Ring::start().map_err(|e| (e.kind(), e.to_string())))
            .as_ref()
            .map_err(|(kind, message)| io::Error::new(*kind, message.clone()))
    }

    fn start() -> io::Result<Ring> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(efd) };
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake,
            sleeping: AtomicBool::new(false),
            dead: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        let (made, ring_made) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("uring".into())
            .spawn(move || match new_ring() {
                Ok(ring) => {
                    let _ = made.send(Ok(()));
                    RingThread::new(ring, thread_shared).run();
                }
                Err(e) => {
                    let _ = made.send(Err(e));
                }
            })?;
        ring_made
            .recv()
            .map_err(|_| io::Error::other("the io_uring thread ended at start"))??;
        Ok(Ring { shared })
    }

    /// Queues `request` on `file`; the reply comes through its oneshot.
    pub(crate) fn submit(&self, file: Arc<File>, request: Request) {
        let mut queue = self.shared.queue.lock();
        if self.shared.dead.load(Ordering::Acquire) {
            drop(queue);
            reply(
                request,
                Err(io::Error::other("the io_uring of this process failed")),
            );
            return;
        }
        queue.push_back(Queued { file, request });
        // Read under the lock: the ring thread sets it under the same lock
        // after finding the queue empty, so either it sees this request
        // before it waits, or this sees that it waits.
        let asleep = self.shared.sleeping.swap(false, Ordering::AcqRel);
        drop(queue);
        if asleep {
            self.shared.wake();
        }
    }
}

struct RingThread {
    ring: IoUring,
    shared: Arc<Shared>,
    slots: Vec<Option<InFlight>>,
    free_slots: Vec<usize>,
    in_flight: usize,
    wake_buf: Box<u64>,
    wake_armed: bool,
}

impl RingThread {
    fn new(ring: IoUring, shared: Arc<Shared>) -> Self {
        RingThread {
            ring,
            shared,
            slots: Vec::new(),
            free_slots: Vec::new(),
            in_flight: 0,
            wake_buf: Box::new(0),
            wake_armed: false,
        }
    }

    fn run(mut self) {
        loop {
            if !self.wake_armed {
                self.arm_wake();
            }
            self.take_queued();
            {
                // Only this thread changes the room.
                let room = self.has_room();
                let queue = self.shared.queue.lock();
                if room && !queue.is_empty() {
                    // Requests arrived after take_queued, from submitters
                    // that saw this thread awake and wrote no eventfd.
                    continue;
                }
                self.shared.sleeping.store(true, Ordering::Release);
            }
            let waited = self.ring.submit_and_wait(1);
            self.shared.sleeping.store(false, Ordering::Release);
            match waited {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Completion queue full: reap, then go on.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                // The kernel could not allocate a request now: back off.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ENOMEM)) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => {
                    tracing::error!("io_uring submit failed: {e}; the device stops");
                    self.die(e);
                    return;
                }
            }
            self.reap();
        }
    }

    fn arm_wake(&mut self) {
        let entry = opcode::Read::new(
            types::Fd(self.shared.wake.as_raw_fd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(WAKE_TOKEN);
        // SAFETY: wake_buf is boxed and lives as long as the ring thread.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            self.wake_armed = true;
        }
    }

    /// Whether another request fits (one completion slot stays free for the
    /// wake read).
    fn has_room(&mut self) -> bool {
        self.in_flight + 1 < RING_ENTRIES as usize && !self.ring.submission().is_full()
    }

    /// Moves queued requests into the submission queue while there is room.
    fn take_queued(&mut self) {
        loop {
            if !self.has_room() {
                return;
            }
            let Some(Queued { file, request }) = self.shared.queue.lock().pop_front() else {
                return;
            };
            let slot = match self.free_slots.pop() {
                Some(slot) => slot,
                None => {
                    self.slots.push(None);
                    self.slots.len() - 1
                }
            };
            self.slots[slot] = Some(InFlight {
                file,
                request,
                done: 0,
            });
            self.in_flight += 1;
            self.push_entry(slot);
        }
    }

    /// Pushes the SQE for the (remaining part of the) request in `slot`.
    fn push_entry(&mut self, slot: usize) {
        let in_flight = self.slots[slot].as_mut().expect("slot holds a request");
        let fd = types::Fd(in_flight.file.as_raw_fd());
        let done = in_flight.done;
        let entry = match &mut in_flight.request {
            Request::Read { offset, buf, .. } => {
                // SAFETY: done <= len, so the pointer stays within the buffer.
                let ptr = unsafe { buf.as_mut_ptr().add(done) };
                opcode::Read::new(fd, ptr, (buf.len() - done) as u32)
                    .offset(*offset + done as u64)
                    .build()
            }
            Request::Write {
                offset, buf, dsync, ..
            } => {
                // SAFETY: done <= len, so the pointer stays within the buffer.
                let ptr = unsafe { buf.as_ptr().add(done) };
                opcode::Write::new(fd, ptr, (buf.len() - done) as u32)
                    .offset(*offset + done as u64)
                    .rw_flags(if *dsync { libc::RWF_DSYNC } else { 0 })
                    .build()
            }
            Request::Fdatasync { .. } => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Request::Fallocate {
                mode, offset, len, ..
            } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(*mode)
                .build(),
        };
        let entry = entry.user_data(slot as u64);
        // SAFETY: the buffer the entry points at, and the file, are owned by
        // the request in `slots`, which stays there until its completion is
        // reaped. Room
        // was checked by the caller (take_queued) or freed by the completion
        // being resubmitted (reap).
        unsafe { self.ring.submission().push(&entry) }.expect("submission queue has room");
    }

    fn reap(&mut self) {
        let completions: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (token, result) in completions {
            if token == WAKE_TOKEN {
                self.wake_armed = false;
                continue;
            }
            self.complete(token as usize, result);
        }
    }

    fn complete(&mut self, slot: usize, result: i32) {
        let mut in_flight = self.slots[slot].take().expect("completion for a live slot");
        let outcome: Option<io::Result<()>> = if result == -libc::EINTR || result == -libc::EAGAIN {
            None // retry as is
        } else if result < 0 {
            Some(Err(io::Error::from_raw_os_error(-result)))
        } else {
            let transferred = result as usize;
            match &in_flight.request {
                Request::Read { buf, .. } => progress(&mut in_flight.done, transferred, buf.len()),
                Request::Write { buf, .. } => progress(&mut in_flight.done, transferred, buf.len()),
                Request::Fdatasync { .. } | Request::Fallocate { .. } => Some(Ok(())),
            }
        };
        match outcome {
            None => {
                self.slots[slot] = Some(in_flight);
                self.push_entry(slot);
            }
            Some(result) => {
                self.free_slots.push(slot);
                self.in_flight -= 1;
                reply(in_flight.request, result);
            }
        }
    }

    /// The ring failed for good. Requests not yet handed to the kernel fail
    /// now. Those the kernel may still be working on keep their buffers
    /// until their completions arrive; any still missing after a grace
    /// period fail with a fresh buffer while the original is leaked, so the
    /// kernel can never write into memory that was freed.
    fn die(&mut self, err: io::Error) {
        let failure = || io::Error::new(err.kind(), err.to_string());
        let queued: Vec<Queued> = {
            let mut queue = self.shared.queue.lock();
            self.shared.dead.store(true, Ordering::Release);
            queue.drain(..).collect()
        };
        for Queued { request, .. } in queued {
            reply(request, Err(failure()));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let poll = types::Timespec::new().nsec(10_000_000);
        let wait = types::SubmitArgs::new().timespec(&poll);
        while self.in_flight > 0 && std::time::Instant::now() < deadline {
            // Waiting in the kernel also runs deferred completion work.
            if self.ring.submitter().submit_with_args(1, &wait).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            self.reap();
        }
        for slot in self.slots.iter_mut() {
            if let Some(in_flight) = slot.take() {
                std::mem::forget(in_flight.file);
                let request = match in_flight.request {
                    Request::Read { offset, buf, reply } => {
                        let len = buf.len();
                        std::mem::forget(buf);
                        Request::Read {
                            offset,
                            buf: IoBufMut::zeroed(len),
                            reply,
                        }
                    }
                    Request::Write {
                        offset,
                        buf,
                        dsync,
                        reply,
                    } => {
                        std::mem::forget(buf.clone());
                        Request::Write {
                            offset,
                            buf,
                            dsync,
                            reply,
                        }
                    }
                    other => other,
                };
                reply(request, Err(failure()));
            }
        }
    }
}

/// A ring for the calling thread, which alone will submit to it; plain
/// where the kernel predates `DEFER_TASKRUN` (6.1).
fn new_ring() -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(RING_ENTRIES)
        .or_else(|_| IoUring::new(RING_ENTRIES))
}

/// Advances a read or write by `transferred` bytes: `Some` once it is finished
/// (or can make no progress), `None` when the remainder must be resubmitted.
fn progress(done: &mut usize, transferred: usize, len: usize) -> Option<io::Result<()>> {
    if transferred == 0 {
        return Some(Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "transfer stopped short (end of file?)",
        )));
    }
    *done += transferred;
    (*done >= len).then_some(Ok(()))
}

/// Sends the result back; a caller that stopped waiting just drops it.
fn reply(request: Request, result: io::Result<()>) {
    match request {
        Request::Read { buf, reply, .. } => {
            let _ = reply.send((result, buf));
        }
        Request::Write { buf, reply, .. } => {
            let _ = reply.send((result, buf));
        }
        Request::Fdatasync { reply } | Request::Fallocate { reply, .. } => {
            let _ = reply.send(result);
        }
    }
}
