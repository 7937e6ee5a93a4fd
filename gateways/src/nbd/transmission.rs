//! The transmission phase of one connection: many requests in flight,
//! replies in completion order.
//!
//! ```text
//!   socket read half ──> reader loop ──spawn──> request task (x max_in_flight)
//!                          │   (parses headers,       │ execute on the device,
//!                          │    reads WRITE payloads  │ EIO if it panicked
//!                          │    into aligned buffers) │
//!                          └──── errors ──> replies (bounded channel) <──┘
//!                                                │
//!   socket write half <── writer task (batches replies, flushes when idle)
//! ```
//!
//! - A semaphore of `max_in_flight` permits bounds the requests (and the
//!   WRITE payload buffers) held at once; taking every permit is how the
//!   connection waits for in-flight requests to finish.
//! - Each request runs in its own task, awaited by a small supervisor task:
//!   a panic surfaces as a `JoinError` and becomes an `EIO` reply, and the
//!   connection carries on.
//! - Ending: on `NBD_CMD_DISC` or end of stream, in-flight requests finish
//!   and their replies are flushed before the socket closes. On a protocol
//!   violation (bad request magic, a WRITE payload too large to skip) the
//!   socket closes at once. On server shutdown, requests read meanwhile get
//!   `NBD_ESHUTDOWN`, in-flight ones finish (for at most the grace period),
//!   then the socket closes. In every case the export, and so its guard, is
//!   released only after the last request on the device has finished.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use blockvirt::IoBufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::commands::{self, command_name, error_reply, Context, Failure, Part, Reply};
use super::proto::{cmd, decode_request, err, REQUEST_BYTES};
use super::session::{Session, PORTABLE_PAYLOAD_BYTES};

/// A WRITE announcing more than this is treated as an attack and ends the
/// connection; between the maximum payload and this, the payload is read
/// and dropped and the request fails with `EINVAL`. The spec asks that
/// payloads up to 32 MiB never be treated as an attack.
pub(crate) const WRITE_DISCARD_LIMIT_BYTES: u32 = 2 * PORTABLE_PAYLOAD_BYTES;

/// Limits of one connection, from the server configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_in_flight: u32,
    pub shutdown_grace: Duration,
}

/// Why the reader stopped.
#[derive(Debug)]
enum End {
    /// `NBD_CMD_DISC`: finish in-flight requests, then close.
    Disconnect,
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
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(Context::new(&session));
    let permits = Arc::new(Semaphore::new(limits.max_in_flight as usize));
    let (replies, reply_queue) = mpsc::channel(limits.max_in_flight as usize);
    let mut writer_task = tokio::spawn(write_loop(writer, reply_queue).in_current_span());

    let mut shutting_down = false;
    let end = {
        let reading = read_loop(
            reader,
            ctx.clone(),
            replies.clone(),
            permits.clone(),
            shutdown.clone(),
        );
        tokio::pin!(reading);
        let mut shutdown_signal = shutdown.clone();
        tokio::select! {
            end = &mut reading => end,
            _ = wait_for_shutdown(&mut shutdown_signal) => {
                shutting_down = true;
                tracing::debug!("shutdown: finishing in-flight requests");
                // Keep reading (new requests get ESHUTDOWN) until the
                // in-flight ones are done or the client leaves.
                tokio::select! {
                    end = &mut reading => end,
                    _ = drain(&permits, limits.max_in_flight) => End::Disconnect,
                }
            }
        }
        // Dropping the reader here closes the socket's read side.
    };

    match &end {
        End::Disconnect | End::Eof => tracing::debug!(?end, "connection ending"),
        End::Io(e) => tracing::debug!("connection failed: {e}"),
        End::Violation(why) => {
            tracing::warn!("protocol violation, disconnecting: {why}");
            writer_task.abort();
        }
    }
    // Requests still running touch the device: wait for them before the
    // export (and its guard) is released.
    let mut shutdown_signal = shutdown.clone();
    finish_in_flight(
        &permits,
        limits,
        &mut writer_task,
        &mut shutdown_signal,
        shutting_down,
    )
    .await;
    drop(replies);
    match tokio::time::timeout(limits.shutdown_grace, &mut writer_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::debug!("writing replies failed: {e}"),
        Ok(Err(e)) if e.is_cancelled() => {}
        Ok(Err(e)) => tracing::error!("reply writer failed: {e}"),
        Err(_) => {
            tracing::warn!("client did not take its last replies within the grace period");
            writer_task.abort();
        }
    }
    drop(ctx);
    tracing::debug!(export = %session.export_name, "connection closed");
    drop(session);
}

/// Waits for in-flight requests. Once the server is shutting down, a writer
/// stuck on a client that stopped reading is cut off after the grace period,
/// so the tasks blocked on queueing their replies can finish.
async fn finish_in_flight(
    permits: &Semaphore,
    limits: Limits,
    writer_task: &mut JoinHandle<io::Result<()>>,
    shutdown: &mut watch::Receiver<bool>,
    shutting_down: bool,
) {
    if !shutting_down {
        tokio::select! {
            _ = drain(permits, limits.max_in_flight) => return,
            _ = wait_for_shutdown(shutdown) => {}
        }
    }
    if tokio::time::timeout(limits.shutdown_grace, drain(permits, limits.max_in_flight))
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests outlived the shutdown grace period; closing");
        writer_task.abort();
        drain(permits, limits.max_in_flight).await;
    }
}

async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender means the server is gone: stop as well.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// Waits until no request is in flight.
async fn drain(permits: &Semaphore, max_in_flight: u32) {
    // Never fails: the semaphore is not closed.
    let _all = permits.acquire_many(max_in_flight).await;
}

async fn read_loop<R>(
    reader: R,
    ctx: Arc<Context>,
    replies: mpsc::Sender<Reply>,
    permits: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
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

        let refusal = if *shutdown.borrow() {
            Err(Failure::new(err::ESHUTDOWN, "server is shutting down"))
        } else {
            commands::validate(&ctx, &request)
        };
        let op = match refusal {
            Ok(op) => op,
            Err(failure) => {
                if failure.error != err::ESHUTDOWN {
                    tracing::debug!(
                        cookie = request.cookie,
                        "{name} refused: {}",
                        failure.message
                    );
                }
                if let Err(e) = skip(&mut reader, payload_bytes).await {
                    return e;
                }
                if replies
                    .send(error_reply(&ctx, request.cookie, &failure))
                    .await
                    .is_err()
                {
                    return End::Io(io::ErrorKind::BrokenPipe.into());
                }
                continue;
            }
        };

        // Taken before the payload buffer exists, so permits bound memory too.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return End::Io(io::Error::other("request permits closed"));
        };
        if *shutdown.borrow() {
            drop(permit);
            if let Err(e) = skip(&mut reader, payload_bytes).await {
                return e;
            }
            let failure = Failure::new(err::ESHUTDOWN, "server is shutting down");
            if replies
                .send(error_reply(&ctx, request.cookie, &failure))
                .await
                .is_err()
            {
                return End::Io(io::ErrorKind::BrokenPipe.into());
            }
            continue;
        }
        let payload = if request.command == cmd::WRITE {
            let mut buf = IoBufMut::zeroed(payload_bytes as usize);
            match reader.read_exact(&mut buf[..]).await {
                Ok(_) => Some(buf),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return End::Violation("client closed the connection in a WRITE payload".into())
                }
                Err(e) => return End::Io(e),
            }
        } else {
            None
        };

        let ctx = ctx.clone();
        let replies = replies.clone();
        // The supervisor owns the permit: it is released only once the
        // reply is queued, so "all permits free" means "nothing in flight".
        tokio::spawn(
            async move {
                let cookie = request.cookie;
                let work: JoinHandle<Reply> = tokio::spawn(
                    {
                        let ctx = ctx.clone();
                        async move { commands::execute(&ctx, request, op, payload).await }
                    }
                    .in_current_span(),
                );
                let reply = match work.await {
                    Ok(reply) => reply,
                    Err(e) => {
                        tracing::error!(cookie, "{name} task failed: {e}");
                        let failure =
                            Failure::new(err::EIO, format!("internal error while handling {name}"));
                        error_reply(&ctx, cookie, &failure)
                    }
                };
                // A closed queue means the connection is gone; nobody to tell.
                let _ = replies.send(reply).await;
                drop(replies);
                drop(ctx);
                drop(permit);
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
        Ok(_) => Err(End::Violation(
            "client closed the connection in a WRITE payload".into(),
        )),
        Err(e) => Err(End::Io(e)),
    }
}

/// Writes replies in the order they complete. Several ready replies go out
/// in one flush; the socket is flushed whenever the queue runs dry, so a
/// lone reply is never held back.
async fn write_loop<W>(writer: W, mut queue: mpsc::Receiver<Reply>) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut writer = BufWriter::with_capacity(64 << 10, writer);
    while let Some(reply) = queue.recv().await {
        write_reply(&mut writer, reply).await?;
        while let Ok(reply) = queue.try_recv() {
            write_reply(&mut writer, reply).await?;
        }
        writer.flush().await?;
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
