//! What each transmission command means for a `BlockDevice`: validation
//! (pure, so every rule is unit-tested) and execution into a [`Reply`].
//!
//! Validation follows the protocol's error rules, in this order:
//! unknown command or flag -> `EINVAL`; a write-side command on a read-only
//! export -> `EPERM`; past the end -> `ENOSPC` for WRITE and WRITE_ZEROES,
//! `EINVAL` for the rest; not aligned to the minimum block -> `EINVAL`; a
//! payload over the maximum -> `EINVAL` (`EOVERFLOW` for structured reads,
//! which the spec allows to refuse up front). Zero-length requests are
//! answered, never a reason to disconnect. Device errors go through
//! `BlockError::errno` and [`nbd_error_from_errno`]; `NBD_ENOTSUP` is
//! reserved for refused fast zeroes, as the spec asks.
//!
//! Durability: FUA on WRITE uses the device's FUA when it has one and
//! write + flush otherwise; FUA on TRIM and WRITE_ZEROES is the operation
//! followed by a flush. FLUSH is device-wide, which is what makes
//! `NBD_FLAG_CAN_MULTI_CONN` honest (see `exports`).
//!
//! `NBD_CMD_CACHE` is validated and acknowledged without touching the
//! device: there is no cache layer below the gateway to warm (leaves use
//! `O_DIRECT`), and reading the range only to throw it away would cost
//! real I/O for no later gain. The spec allows exactly this.

use std::sync::Arc;
use std::time::Instant;

use blockvirt::{
    BlockDevice, BlockError, BlockStatus, ByteRange, Caps, ErrorKind, IoBufMut, StatusExtent,
    WriteFlags, ZeroFlags,
};

use super::extents::{descriptors, plan_read, ReadPiece};
use super::proto::{
    chunk, cmd, cmd_flag, encode_block_status_chunk, encode_error_chunk, encode_none_chunk,
    encode_offset_data_header, encode_offset_hole, encode_simple_reply, err, nbd_error_from_errno,
    transmission_flag as tf, BlockSizes, Request,
};
use super::session::Session;
use crate::observe::{IoObserver, IoOp};

/// Structured reads at least this long first ask the device for holes, and
/// zero runs at least this long are sent as `OFFSET_HOLE` instead of data.
/// Shorter reads (a VM's random I/O) skip the extra status query.
pub(crate) const READ_HOLE_MIN_BYTES: u32 = 64 << 10;

/// Everything a request handler needs to know about its connection.
pub(crate) struct Context {
    pub device: Arc<dyn BlockDevice>,
    pub size_bytes: u64,
    pub sizes: BlockSizes,
    pub transmission_flags: u16,
    pub structured_replies: bool,
    pub allocation_context: Option<u32>,
    pub observer: Option<Arc<dyn IoObserver>>,
}

impl Context {
    pub(crate) fn new(session: &Session) -> Self {
        Context {
            device: session.export.device.clone(),
            size_bytes: session.size_bytes,
            sizes: session.sizes,
            transmission_flags: session.transmission_flags,
            structured_replies: session.structured_replies,
            allocation_context: session.allocation_context,
            observer: session.export.observer.clone(),
        }
    }

    /// Reports an answered request to the export's observer; commands
    /// with no [`IoOp`] (unknown ones) are not reported.
    pub(crate) fn observe(&self, request: &Request, started: Instant, ok: bool) {
        if let (Some(observer), Some(op)) = (&self.observer, io_op(request.command)) {
            observer.completed(op, u64::from(request.len_bytes), started.elapsed(), ok);
        }
    }

    fn read_only(&self) -> bool {
        self.transmission_flags & tf::READ_ONLY != 0
    }

    fn caps(&self) -> Caps {
        self.device.info().caps
    }
}

/// One reply, written to the socket as a unit.
#[derive(Debug)]
pub(crate) struct Reply {
    pub parts: Vec<Part>,
    /// False for an error reply.
    pub ok: bool,
}

#[derive(Debug)]
pub(crate) enum Part {
    Bytes(Vec<u8>),
    Data(IoBufMut),
}

impl Reply {
    fn bytes(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            parts: vec![Part::Bytes(bytes.into())],
            ok: true,
        }
    }
}

/// A request the server refuses, with the NBD error and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub error: u32,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(error: u32, message: impl Into<String>) -> Self {
        Failure {
            error,
            message: message.into(),
        }
    }
}

/// A validated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read {
        offset_bytes: u64,
        len_bytes: u32,
        df: bool,
    },
    Write {
        offset_bytes: u64,
        fua: bool,
    },
    Flush,
    Trim {
        range: ByteRange,
        fua: bool,
    },
    Cache,
    WriteZeroes {
        range: ByteRange,
        flags: ZeroFlags,
        fua: bool,
    },
    BlockStatus {
        offset_bytes: u64,
        len_bytes: u32,
        req_one: bool,
    },
}

/// The kind an observer is told about; `None` for DISC and unknown commands.
pub(crate) fn io_op(command: u16) -> Option<IoOp> {
    Some(match command {
        cmd::READ => IoOp::Read,
        cmd::WRITE => IoOp::Write,
        cmd::FLUSH => IoOp::Flush,
        cmd::TRIM => IoOp::Trim,
        cmd::CACHE => IoOp::Cache,
        cmd::WRITE_ZEROES => IoOp::WriteZeroes,
        cmd::BLOCK_STATUS => IoOp::BlockStatus,
        _ => return None,
    })
}

pub(crate) fn command_name(command: u16) -> &'static str {
    match command {
        cmd::READ => "READ",
        cmd::WRITE => "WRITE",
        cmd::DISC => "DISC",
        cmd::FLUSH => "FLUSH",
        cmd::TRIM => "TRIM",
        cmd::CACHE => "CACHE",
        cmd::WRITE_ZEROES => "WRITE_ZEROES",
        cmd::BLOCK_STATUS => "BLOCK_STATUS",
        _ => "unknown command",
    }
}

/// Checks a request against the negotiated export (see the module docs for
/// the rules and their order). `NBD_CMD_DISC` never gets here.
pub(crate) fn validate(ctx: &Context, request: &Request) -> Result<Op, Failure> {
    let name = command_name(request.command);
    let allowed_flags = match request.command {
        cmd::READ if ctx.structured_replies => cmd_flag::FUA | cmd_flag::DF,
        cmd::WRITE_ZEROES => cmd_flag::FUA | cmd_flag::NO_HOLE | cmd_flag::FAST_ZERO,
        cmd::BLOCK_STATUS => cmd_flag::FUA | cmd_flag::REQ_ONE,
        // FUA is valid on every command (and some clients set it on reads).
        cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM | cmd::CACHE => cmd_flag::FUA,
        other => {
            return Err(Failure::new(
                err::EINVAL,
                format!("unknown command {other}"),
            ))
        }
    };
    let unknown_flags = request.flags & !allowed_flags;
    if unknown_flags != 0 {
        return Err(Failure::new(
            err::EINVAL,
            format!("flags {unknown_flags:#x} are not valid for {name} on this connection"),
        ));
    }
    let fua = request.flags & cmd_flag::FUA != 0;
    let writes = matches!(request.command, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if writes && ctx.read_only() {
        return Err(Failure::new(
            err::EPERM,
            format!("{name} on a read-only export"),
        ));
    }
    let offset_bytes = request.offset_bytes;
    let len_bytes = request.len_bytes;
    if request.command == cmd::FLUSH {
        if offset_bytes != 0 || len_bytes != 0 {
            return Err(Failure::new(
                err::EINVAL,
                "FLUSH with nonzero offset or length",
            ));
        }
        return Ok(Op::Flush);
    }
    check_range(ctx, name, request)?;
    match request.command {
        cmd::READ => {
            if len_bytes > ctx.sizes.max_payload_bytes {
                // A structured reply could be split, but refusing up front
                // with EOVERFLOW is allowed and bounds the buffer we allocate.
                let error = if ctx.structured_replies {
                    err::EOVERFLOW
                } else {
                    err::EINVAL
                };
                return Err(Failure::new(
                    error,
                    format!(
                        "READ of {len_bytes} bytes exceeds the maximum payload of {} bytes",
                        ctx.sizes.max_payload_bytes
                    ),
                ));
            }
            Ok(Op::Read {
                offset_bytes,
                len_bytes,
                df: request.flags & cmd_flag::DF != 0,
            })
        }
        cmd::WRITE => {
            if len_bytes > ctx.sizes.max_payload_bytes {
                return Err(Failure::new(
                    err::EINVAL,
                    format!(
                        "WRITE of {len_bytes} bytes exceeds the maximum payload of {} bytes",
                        ctx.sizes.max_payload_bytes
                    ),
                ));
            }
            Ok(Op::Write { offset_bytes, fua })
        }
        cmd::TRIM => {
            if !ctx.caps().contains(Caps::DISCARD) {
                return Err(Failure::new(
                    err::EINVAL,
                    "TRIM is not offered by this export",
                ));
            }
            Ok(Op::Trim {
                range: ByteRange::new(offset_bytes, u64::from(len_bytes)),
                fua,
            })
        }
        cmd::CACHE => Ok(Op::Cache),
        cmd::WRITE_ZEROES => {
            let mut flags = ZeroFlags::empty();
            if request.flags & cmd_flag::NO_HOLE != 0 {
                flags |= ZeroFlags::NO_HOLE;
            }
            if request.flags & cmd_flag::FAST_ZERO != 0 {
                if !ctx.caps().contains(Caps::FAST_ZERO) {
                    // The device cannot tell fast from slow: refuse at once,
                    // which the spec counts as a fast answer.
                    return Err(Failure::new(
                        err::ENOTSUP,
                        "fast zeroing is not available on this export",
                    ));
                }
                flags |= ZeroFlags::FAST;
            }
            Ok(Op::WriteZeroes {
                range: ByteRange::new(offset_bytes, u64::from(len_bytes)),
                flags,
                fua,
            })
        }
        cmd::BLOCK_STATUS => {
            if ctx.allocation_context.is_none() {
                return Err(Failure::new(
                    err::EINVAL,
                    "BLOCK_STATUS without a metadata context selected for this export",
                ));
            }
            if len_bytes == 0 {
                return Err(Failure::new(err::EINVAL, "BLOCK_STATUS of zero bytes"));
            }
            Ok(Op::BlockStatus {
                offset_bytes,
                len_bytes,
                req_one: request.flags & cmd_flag::REQ_ONE != 0,
            })
        }
        _ => unreachable!("unknown commands were rejected with the flags"),
    }
}

/// End of the export, then alignment (the order the spec's examples imply).
fn check_range(ctx: &Context, name: &str, request: &Request) -> Result<(), Failure> {
    let offset_bytes = request.offset_bytes;
    let len_bytes = u64::from(request.len_bytes);
    let fits = offset_bytes
        .checked_add(len_bytes)
        .is_some_and(|end| end <= ctx.size_bytes);
    if !fits {
        let error = match request.command {
            cmd::WRITE | cmd::WRITE_ZEROES => err::ENOSPC,
            _ => err::EINVAL,
        };
        return Err(Failure::new(
            error,
            format!(
                "{name} at {offset_bytes}+{len_bytes} ends past the export size {}",
                ctx.size_bytes
            ),
        ));
    }
    let block = u64::from(ctx.sizes.min_bytes);
    if !offset_bytes.is_multiple_of(block) || !len_bytes.is_multiple_of(block) {
        return Err(Failure::new(
            err::EINVAL,
            format!("{name} at {offset_bytes}+{len_bytes} is not aligned to {block} bytes"),
        ));
    }
    Ok(())
}

/// The reply carrying `failure`: an error chunk with its message when
/// structured replies are on (mandatory for READ), else a simple reply.
pub(crate) fn error_reply(ctx: &Context, cookie: u64, failure: &Failure) -> Reply {
    let mut reply = if ctx.structured_replies {
        Reply::bytes(encode_error_chunk(cookie, failure.error, &failure.message))
    } else {
        Reply::bytes(encode_simple_reply(failure.error, cookie))
    };
    reply.ok = false;
    reply
}

/// A payload-less success (a simple reply is allowed even when structured
/// replies are on, and is the shortest).
fn ok_reply(cookie: u64) -> Reply {
    Reply::bytes(encode_simple_reply(0, cookie))
}

/// Runs a validated request against the device and builds its reply.
pub(crate) async fn execute(
    ctx: &Context,
    request: Request,
    op: Op,
    payload: Option<IoBufMut>,
) -> Reply {
    let cookie = request.cookie;
    let result = match op {
        Op::Read {
            offset_bytes,
            len_bytes,
            df,
        } => read(ctx, cookie, offset_bytes, len_bytes, df).await,
        Op::Write { offset_bytes, fua } => {
            let payload = payload.unwrap_or_else(|| IoBufMut::zeroed(0));
            write(ctx, offset_bytes, payload, fua)
                .await
                .map(|_| ok_reply(cookie))
        }
        Op::Flush => flush(ctx, "FLUSH").await.map(|_| ok_reply(cookie)),
        Op::Trim { range, fua } => trim(ctx, range, fua).await.map(|_| ok_reply(cookie)),
        Op::Cache => Ok(ok_reply(cookie)),
        Op::WriteZeroes { range, flags, fua } => write_zeroes(ctx, range, flags, fua)
            .await
            .map(|_| ok_reply(cookie)),
        Op::BlockStatus {
            offset_bytes,
            len_bytes,
            req_one,
        } => block_status(ctx, cookie, offset_bytes, len_bytes, req_one).await,
    };
    match result {
        Ok(reply) => reply,
        Err(failure) => error_reply(ctx, cookie, &failure),
    }
}

/// Translates a device error, logging the full detail on the server. The
/// client's message is kept short: it must not carry backing paths.
fn device_failure(what: String, error: &BlockError, fast_zero: bool) -> Failure {
    let mut code = nbd_error_from_errno(error.errno());
    if code == err::ENOTSUP && !fast_zero {
        // ENOTSUP means "fast zero refused" to a client; anything else the
        // device cannot do here is a failure of the device.
        code = err::EIO;
    }
    match error.kind() {
        ErrorKind::Io | ErrorKind::Corrupt | ErrorKind::Poisoned | ErrorKind::Internal => {
            tracing::warn!("{what} failed: {error}")
        }
        _ => tracing::debug!("{what} failed: {error}"),
    }
    Failure::new(
        code,
        format!("{what} failed: {}", error.kind().description()),
    )
}

async fn flush(ctx: &Context, what: &str) -> Result<(), Failure> {
    // Without a volatile cache, completed writes are already durable.
    if !ctx.caps().contains(Caps::FLUSH) {
        return Ok(());
    }
    ctx.device
        .flush()
        .await
        .map_err(|e| device_failure(what.to_owned(), &e, false))
}

async fn write(
    ctx: &Context,
    offset_bytes: u64,
    payload: IoBufMut,
    fua: bool,
) -> Result<(), Failure> {
    if payload.is_empty() {
        return Ok(());
    }
    let native_fua = fua && ctx.caps().contains(Caps::FUA);
    let flags = if native_fua {
        WriteFlags::FUA
    } else {
        WriteFlags::empty()
    };
    let len_bytes = payload.len();
    let (result, _) = ctx
        .device
        .write_at(offset_bytes, payload.freeze(), flags)
        .await;
    let what = || format!("WRITE at {offset_bytes}+{len_bytes}");
    result.map_err(|e| device_failure(what(), &e, false))?;
    if fua && !native_fua {
        flush(ctx, &what()).await?;
    }
    Ok(())
}

async fn trim(ctx: &Context, range: ByteRange, fua: bool) -> Result<(), Failure> {
    if range.len_bytes == 0 {
        return Ok(());
    }
    let what = || format!("TRIM at {}+{}", range.offset_bytes, range.len_bytes);
    ctx.device
        .discard(range)
        .await
        .map_err(|e| device_failure(what(), &e, false))?;
    if fua {
        flush(ctx, &what()).await?;
    }
    Ok(())
}

async fn write_zeroes(
    ctx: &Context,
    range: ByteRange,
    flags: ZeroFlags,
    fua: bool,
) -> Result<(), Failure> {
    if range.len_bytes == 0 {
        return Ok(());
    }
    let what = || format!("WRITE_ZEROES at {}+{}", range.offset_bytes, range.len_bytes);
    let fast = flags.contains(ZeroFlags::FAST);
    ctx.device
        .write_zeroes(range, flags)
        .await
        .map_err(|e| device_failure(what(), &e, fast))?;
    if fua {
        flush(ctx, &what()).await?;
    }
    Ok(())
}

async fn read(
    ctx: &Context,
    cookie: u64,
    offset_bytes: u64,
    len_bytes: u32,
    df: bool,
) -> Result<Reply, Failure> {
    if len_bytes == 0 {
        return Ok(if ctx.structured_replies {
            Reply::bytes(encode_none_chunk(cookie))
        } else {
            ok_reply(cookie)
        });
    }
    let whole = vec![ReadPiece {
        offset_bytes,
        len_bytes,
        hole: false,
    }];
    // Holes need structured replies and, with DF, may not fragment the reply.
    let pieces = if ctx.structured_replies
        && !df
        && len_bytes >= READ_HOLE_MIN_BYTES
        && ctx.caps().contains(Caps::BLOCK_STATUS)
    {
        match ctx
            .device
            .block_status(ByteRange::new(offset_bytes, u64::from(len_bytes)))
            .await
        {
            Ok(extents) => plan_read(&extents, offset_bytes, len_bytes, READ_HOLE_MIN_BYTES),
            Err(e) => {
                // Only an optimisation: read everything instead.
                tracing::debug!("status before READ at {offset_bytes} failed: {e}");
                whole
            }
        }
    } else {
        whole
    };

    let mut data = Vec::with_capacity(pieces.len());
    for piece in &pieces {
        if piece.hole {
            data.push(None);
            continue;
        }
        let buf = IoBufMut::zeroed(piece.len_bytes as usize);
        let (result, buf) = ctx.device.read_at(piece.offset_bytes, buf).await;
        result.map_err(|e| {
            device_failure(
                format!("READ at {}+{}", piece.offset_bytes, piece.len_bytes),
                &e,
                false,
            )
        })?;
        data.push(Some(buf));
    }

    let mut parts = Vec::with_capacity(2 * pieces.len());
    if !ctx.structured_replies {
        parts.push(Part::Bytes(encode_simple_reply(0, cookie).to_vec()));
        parts.extend(data.into_iter().flatten().map(Part::Data));
        return Ok(Reply { parts, ok: true });
    }
    let last = pieces.len() - 1;
    for (index, (piece, buf)) in pieces.iter().zip(data).enumerate() {
        // Everything was read before the first byte is sent, so no error
        // can follow: the last content chunk may carry DONE.
        let flags = if index == last { chunk::FLAG_DONE } else { 0 };
        match buf {
            None => parts.push(Part::Bytes(
                encode_offset_hole(flags, cookie, piece.offset_bytes, piece.len_bytes).to_vec(),
            )),
            Some(buf) => {
                parts.push(Part::Bytes(
                    encode_offset_data_header(flags, cookie, piece.offset_bytes, piece.len_bytes)
                        .to_vec(),
                ));
                parts.push(Part::Data(buf));
            }
        }
    }
    Ok(Reply { parts, ok: true })
}

async fn block_status(
    ctx: &Context,
    cookie: u64,
    offset_bytes: u64,
    len_bytes: u32,
    req_one: bool,
) -> Result<Reply, Failure> {
    let Some(context_id) = ctx.allocation_context else {
        return Err(Failure::new(err::EINVAL, "no metadata context selected"));
    };
    let range = ByteRange::new(offset_bytes, u64::from(len_bytes));
    let extents = if ctx.caps().contains(Caps::BLOCK_STATUS) {
        ctx.device.block_status(range).await.map_err(|e| {
            device_failure(
                format!("BLOCK_STATUS at {offset_bytes}+{len_bytes}"),
                &e,
                false,
            )
        })?
    } else {
        // Without the capability every block is "data": always true.
        vec![StatusExtent {
            len_bytes: range.len_bytes,
            status: BlockStatus::empty(),
        }]
    };
    let descriptors = descriptors(&extents, len_bytes, req_one);
    Ok(Reply::bytes(encode_block_status_chunk(
        chunk::FLAG_DONE,
        cookie,
        context_id,
        &descriptors,
    )))
}

#[cfg(test)]
mod tests;
