//! The transmission phase of one connection: many requests in flight,
//! replies in completion order.
//!
//! ```text
//!   socket read half ──> reader loop ──spawn──> request task (x max_in_flight)
//!                          │   (parses headers,       │ execute on the device,
//!                          │    reads WRITE payloads  │ EIO if it panics
//!                          │    into aligned buffers) │
//!                          └──── errors ──> replies (bounded channel) <──┘
//!                                                │
//!   socket write half <── writer task (batches replies, flushes when idle)
//! ```
//!
//! - A semaphore of `max_in_flight` permits bounds the requests held at
//!   once, and a second one bounds the bytes of READ and WRITE buffers
//!   (`max_buffer_bytes`). A request keeps its permits until its reply has
//!   been written, so a client that stops reading replies cannot make the
//!   server buffer without limit. Taking every request permit is how the
//!   connection waits until nothing is in flight. The server-wide count
//!   of requests in flight (`NbdStats`) follows the same permits.
//! - Every answered request is reported to the export's observer (if it
//!   has one) with the time from its header being read to its reply being
//!   ready: refused ones too, as failures.
//! - Each request runs in its own task, which catches a panic of the
//!   command (`catch_unwind`) and answers `EIO`; the connection carries on.
//!   (One task, not a command task awaited by a supervisor: a second spawn
//!   and wake per request cost more than the catch.)
//! - Ending: on `NBD_CMD_DISC` or end of stream, in-flight requests finish
//!   and their replies are flushed before the socket closes. On a protocol
//!   violation (bad request magic, a WRITE payload too large to skip) the
//!   socket closes at once. On server shutdown, requests read meanwhile get
//!   `NBD_ESHUTDOWN`, in-flight ones finish (for at most the grace period),
//!   then the socket closes. In every case the export, and so its guard, is
//!   released only after the last request on the device has finished.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use blockvirt::IoBufMut;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::commands::{self, command_name, error_reply, Context, Failure, Part, Reply};
use super::proto::{cmd, decode_request, err, Request, REQUEST_BYTES};
use super::session::{Session, PORTABLE_PAYLOAD_BYTES};
use super::stats::{NbdStats, Tally};

/// A WRITE announcing more than this is treated as an attack and ends the
/// connection; between the maximum payload and this, the payload is read
/// and dropped and the request fails with `EINVAL`. The spec asks that
/// payloads up to 32 MiB never be treated as an attack.
pub(crate) const WRITE_DISCARD_LIMIT_BYTES: u32 = 2 * PORTABLE_PAYLOAD_BYTES;

/// Limits of one connection, from the server configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_in_flight: u32,
    pub max_buffer_bytes: usize,
    pub shutdown_grace: Duration,
}

/// READ and WRITE buffers are accounted in units of this size.
const BUFFER_UNIT_BYTES: usize = 64 << 10;

/// The permits a request holds until its reply is written.
struct Held {
    _request: OwnedSemaphorePermit,
    _buffer: Option<OwnedSemaphorePermit>,
    _in_flight: Tally,
}

/// A reply on its way to the writer, with the permits it releases there.
struct Outgoing {
    reply: Reply,
    held: Option<Held>,
}

impl Outgoing {
    fn unheld(reply: Reply) -> Self {
        Outgoing { reply, held: None }
    }
}

/// The per-connection semaphores.
struct Budget {
    requests: Arc<Semaphore>,
    buffer: Arc<Semaphore>,
    buffer_units: u32,
    max_in_flight: u32,
}

impl Budget {
    fn new(limits: &Limits) -> Self {
        let buffer_units = (limits.max_buffer_bytes / BUFFER_UNIT_BYTES).clamp(1, 1 << 20) as u32;
        Budget {
            requests: Arc::new(Semaphore::new(limits.max_in_flight as usize)),
            buffer: Arc::new(Semaphore::new(buffer_units as usize)),
            buffer_units,
            max_in_flight: limits.max_in_flight,
        }
    }

    /// Buffer units for `len_bytes`; a request larger than the whole budget
    /// takes all of it (and so runs alone) rather than never running.
    fn units(&self, len_bytes: u32) -> u32 {
        (len_bytes as usize)
            .div_ceil(BUFFER_UNIT_BYTES)
            .min(self.buffer_units as usize) as u32
    }

    /// Waits until no request is in flight and every reply is written.
    async fn drain(&self) {
        // Never fails: the semaphore is never closed.
        let _all = self.requests.acquire_many(self.max_in_flight).await;
    }
}

/// Why the reader stopped.
#[derive(Debug)]
enum End {
    /// `NBD_CMD_DISC`: finish in-flight requests, then close.
    Disconnect,
    /// Server shutdown: in-flight requests are done (or out of time).
    Shutdown,
    /// The client closed its side between requests.
    Eof,
    /// A violation that ends the connection at once.
    Violation(String),
    /// The socket failed (or the writer is gone).
    Io(io::Error),
}

/// Serves one negotiated connection until it ends.
pub(crate) async fn serve<R, W>(
    session: Session,
    reader: R,
    writer: W,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
    stats: Arc<NbdStats>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(Context::new(&session));
    let budget = Arc::new(Budget::new(&limits));
    let (replies, reply_queue) = mpsc::channel(limits.max_in_flight as usize);
    let mut writer_task = tokio::spawn(write_loop(writer, reply_queue).in_current_span());
    let mut shutdown_signal = shutdown.clone();

    // Set once the server shuts down: everything must be over by then.
    let mut deadline: Option<Instant> = None;
    let end = {
        let reading = read_loop(
            reader,
            ctx.clone(),
            replies.clone(),
            budget.clone(),
            shutdown,
            stats,
        );
        tokio::pin!(reading);
        tokio::select! {
            end = &mut reading => end,
            _ = wait_for_shutdown(&mut shutdown_signal) => {
                let until = Instant::now() + limits.shutdown_grace;
                deadline = Some(until);
                tracing::debug!("shutdown: finishing in-flight requests");
                // Keep reading (new requests get ESHUTDOWN) until the
                // in-flight ones are done or the client leaves.
                tokio::select! {
                    end = &mut reading => end,
                    _ = budget.drain() => End::Shutdown,
                    _ = tokio::time::sleep_until(until) => End::Shutdown,
                }
            }
        }
        // Dropping the reader here closes the socket's read side.
    };

    match &end {
        End::Disconnect | End::Eof | End::Shutdown => tracing::debug!(?end, "connection ending"),
        End::Io(e) => tracing::debug!("connection failed: {e}"),
        End::Violation(why) => {
            tracing::warn!("protocol violation, disconnecting: {why}");
            writer_task.abort();
        }
    }
    // Requests still running touch the device: wait for them before the
    // export (and its guard) is released.
    finish_in_flight(
        &budget,
        &mut writer_task,
        &mut shutdown_signal,
        deadline,
        limits.shutdown_grace,
    )
    .await;
    drop(replies);
    let writer_deadline = deadline.unwrap_or_else(|| Instant::now() + limits.shutdown_grace);
    match tokio::time::timeout_at(writer_deadline, &mut writer_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::debug!("writing replies failed: {e}"),
        Ok(Err(e)) if e.is_cancelled() => {}
        Ok(Err(e)) => tracing::error!("reply writer failed: {e}"),
        Err(_) => {
            tracing::warn!("client did not take its last replies in time; closing");
            writer_task.abort();
        }
    }
    drop(ctx);
    tracing::debug!(export = %session.export_name, "connection closed");
    drop(session);
}

/// Waits until nothing is in flight. Once the server is shutting down
/// (`deadline` set, or set when shutdown arrives meanwhile), a writer stuck
/// on a client that stopped reading is cut off at the deadline: that drops
/// the queued replies with their permits and lets blocked tasks finish.
async fn finish_in_flight(
    budget: &Budget,
    writer_task: &mut JoinHandle<io::Result<()>>,
    shutdown: &mut watch::Receiver<bool>,
    deadline: Option<Instant>,
    grace: Duration,
) {
    let deadline = match deadline {
        Some(deadline) => deadline,
        None => tokio::select! {
            _ = budget.drain() => return,
            _ = wait_for_shutdown(shutdown) => Instant::now() + grace,
        },
    };
    if tokio::time::timeout_at(deadline, budget.drain())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests outlived the shutdown grace period; closing");
        writer_task.abort();
        budget.drain().await;
    }
}

async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender means the server is gone: stop as well.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// Queues a reply the reader produced itself (a refusal).
async fn refuse(
    replies: &mpsc::Sender<Outgoing>,
    ctx: &Context,
    request: &Request,
    started: StdInstant,
    failure: &Failure,
) -> Result<(), End> {
    ctx.observe(request, started, false);
    replies
        .send(Outgoing::unheld(error_reply(ctx, request.cookie, failure)))
        .await
        .map_err(|_| {
            End::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "reply writer is gone",
            ))
        })
}

fn shutting_down(shutdown: &watch::Receiver<bool>) -> Option<Failure> {
    (*shutdown.borrow()).then(|| Failure::new(err::ESHUTDOWN, "server is shutting down"))
}

async fn read_loop<R>(
    reader: R,
    ctx: Arc<Context>,
    replies: mpsc::Sender<Outgoing>,
    budget: Arc<Budget>,
    shutdown: watch::Receiver<bool>,
    stats: Arc<NbdStats>,
) -> End
where
    R: AsyncRead + Unpin + Send,
{
    let mut reader = BufReader::with_capacity(16 << 10, reader);
    loop {
        let mut header = [0u8; REQUEST_BYTES];
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return End::Eof,
            Err(e) => return End::Io(e),
        }
        let request = match decode_request(&header) {
            Ok(request) => request,
            Err(e) => return End::Violation(format!("request header: {e}")),
        };
        let started = StdInstant::now();
        let name = command_name(request.command);
        tracing::trace!(
            cookie = request.cookie,
            name,
            offset = request.offset_bytes,
            len = request.len_bytes
        );
        if request.command == cmd::DISC {
            if request.offset_bytes != 0 || request.len_bytes != 0 {
                tracing::warn!("DISC with nonzero offset or length; disconnecting anyway");
            }
            return End::Disconnect;
        }
        let payload_bytes = if request.command == cmd::WRITE {
            request.len_bytes
        } else {
            0
        };
        if payload_bytes > WRITE_DISCARD_LIMIT_BYTES {
            return End::Violation(format!("WRITE announces a {payload_bytes}-byte payload"));
        }

        let checked = match shutting_down(&shutdown) {
            Some(failure) => Err(failure),
            None => commands::validate(&ctx, &request),
        };
        let op = match checked {
            Ok(op) => op,
            Err(failure) => {
                if failure.error != err::ESHUTDOWN {
                    tracing::debug!(
                        cookie = request.cookie,
                        "{name} refused: {}",
                        failure.message
                    );
                }
                if let Err(end) = skip(&mut reader, payload_bytes).await {
                    return end;
                }
                if let Err(end) = refuse(&replies, &ctx, &request, started, &failure).await {
                    return end;
                }
                continue;
            }
        };

        // Taken before any buffer exists, so the permits bound memory.
        let Ok(request_permit) = budget.requests.clone().acquire_owned().await else {
            return End::Io(io::Error::other("request permits closed"));
        };
        let buffer_bytes = match request.command {
            cmd::READ | cmd::WRITE => request.len_bytes,
            _ => 0,
        };
        let buffer_permit = if buffer_bytes == 0 {
            None
        } else {
            let units = budget.units(buffer_bytes);
            match budget.buffer.clone().acquire_many_owned(units).await {
                Ok(permit) => Some(permit),
                Err(_) => return End::Io(io::Error::other("buffer permits closed")),
            }
        };
        let held = Held {
            _request: request_permit,
            _buffer: buffer_permit,
            _in_flight: stats.request(),
        };
        if let Some(failure) = shutting_down(&shutdown) {
            drop(held);
            if let Err(end) = skip(&mut reader, payload_bytes).await {
                return end;
            }
            if let Err(end) = refuse(&replies, &ctx, &request, started, &failure).await {
                return end;
            }
            continue;
        }
        let payload = if request.command == cmd::WRITE {
            match IoBufMut::read_exact_from(&mut reader, payload_bytes as usize).await {
                Ok(buf) => Some(buf),
                Err(e) => return End::Io(e),
            }
        } else {
            None
        };

        let ctx = ctx.clone();
        let replies = replies.clone();
        // A panic becomes an EIO reply; the permits go with the reply and
        // are released once it is written.
        tokio::spawn(
            async move {
                let cookie = request.cookie;
                let work =
                    std::panic::AssertUnwindSafe(commands::execute(&ctx, request, op, payload))
                        .catch_unwind();
                let reply = match work.await {
                    Ok(reply) => reply,
                    Err(_) => {
                        tracing::error!(cookie, "{name} panicked");
                        let failure =
                            Failure::new(err::EIO, format!("internal error while handling {name}"));
                        error_reply(&ctx, cookie, &failure)
                    }
                };
                ctx.observe(&request, started, reply.ok);
                let outgoing = Outgoing {
                    reply,
                    held: Some(held),
                };
                // A closed queue means the connection is gone; nobody to
                // tell, and dropping the reply releases the permits.
                let _ = replies.send(outgoing).await;
            }
            .in_current_span(),
        );
    }
}

/// Reads and drops a payload the server will not use.
async fn skip<R: AsyncRead + Unpin>(reader: &mut R, len_bytes: u32) -> Result<(), End> {
    if len_bytes == 0 {
        return Ok(());
    }
    let mut limited = reader.take(u64::from(len_bytes));
    match tokio::io::copy(&mut limited, &mut tokio::io::sink()).await {
        Ok(copied) if copied == u64::from(len_bytes) => Ok(()),
        Ok(_) => Err(End::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "client closed the connection in a WRITE payload",
        ))),
        Err(e) => Err(End::Io(e)),
    }
}

/// Writes replies in the order they complete. Several ready replies go out
/// in one flush; the socket is flushed whenever the queue runs dry, so a
/// lone reply is never held back.
async fn write_loop<W>(writer: W, mut queue: mpsc::Receiver<Outgoing>) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut writer = BufWriter::with_capacity(64 << 10, writer);
    // Permits of written replies are held until the flush: a reply sitting
    // in the buffer still costs memory and is not yet the client's.
    let mut written = Vec::new();
    while let Some(outgoing) = queue.recv().await {
        write_reply(&mut writer, outgoing.reply).await?;
        written.push(outgoing.held);
        while let Ok(outgoing) = queue.try_recv() {
            write_reply(&mut writer, outgoing.reply).await?;
            written.push(outgoing.held);
        }
        writer.flush().await?;
        written.clear();
    }
    writer.shutdown().await
}

async fn write_reply<W: AsyncWrite + Unpin>(writer: &mut W, reply: Reply) -> io::Result<()> {
    for part in reply.parts {
        match part {
            Part::Bytes(bytes) => writer.write_all(&bytes).await?,
            Part::Data(buf) => writer.write_all(&buf).await?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_units_round_up_and_never_exceed_the_budget() {
        let budget = Budget::new(&Limits {
            max_in_flight: 8,
            max_buffer_bytes: 1 << 20,
            shutdown_grace: Duration::from_secs(1),
        });
        assert_eq!(budget.buffer_units, 16);
        assert_eq!(budget.units(1), 1);
        assert_eq!(budget.units(64 << 10), 1);
        assert_eq!(budget.units((64 << 10) + 1), 2);
        assert_eq!(
            budget.units(32 << 20),
            16,
            "a huge request takes the whole budget"
        );
        let tiny = Budget::new(&Limits {
            max_in_flight: 1,
            max_buffer_bytes: 0,
            shutdown_grace: Duration::from_secs(1),
        });
        assert_eq!(tiny.units(4096), 1, "the budget is at least one unit");
    }
}
