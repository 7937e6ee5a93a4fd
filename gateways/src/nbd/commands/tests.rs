//! Validation rules of the transmission commands, one table per concern.

use super::*;
use async_trait::async_trait;
use blockvirt::{BufResult, DeviceInfo, IoBuf};

/// A device that only has an `info`: validation must never touch I/O.
#[derive(Debug)]
struct InfoOnly(DeviceInfo);

fn untouched<T>() -> blockvirt::BlockResult<T> {
    Err(BlockError::new(
        ErrorKind::Internal,
        "validation touched the device",
    ))
}

#[async_trait]
impl BlockDevice for InfoOnly {
    fn info(&self) -> DeviceInfo {
        self.0
    }
    async fn read_at(&self, _offset_bytes: u64, buf: IoBufMut) -> BufResult<IoBufMut> {
        (untouched(), buf)
    }
    async fn write_at(
        &self,
        _offset_bytes: u64,
        buf: IoBuf,
        _flags: WriteFlags,
    ) -> BufResult<IoBuf> {
        (untouched(), buf)
    }
    async fn flush(&self) -> blockvirt::BlockResult<()> {
        untouched()
    }
    async fn discard(&self, _range: ByteRange) -> blockvirt::BlockResult<()> {
        untouched()
    }
    async fn write_zeroes(
        &self,
        _range: ByteRange,
        _flags: ZeroFlags,
    ) -> blockvirt::BlockResult<()> {
        untouched()
    }
    async fn block_status(&self, _range: ByteRange) -> blockvirt::BlockResult<Vec<StatusExtent>> {
        untouched()
    }
}

const SIZE: u64 = 1 << 20;

fn context(caps: Caps, read_only: bool, structured: bool) -> Context {
    let info = DeviceInfo {
        size_bytes: SIZE,
        block_bytes: 4096,
        io_bytes_max: 1 << 20,
        caps,
        read_only,
    };
    Context {
        device: Arc::new(InfoOnly(info)),
        size_bytes: SIZE,
        sizes: crate::nbd::session::block_sizes(&info),
        transmission_flags: crate::nbd::session::transmission_flags(&info, structured),
        structured_replies: structured,
        allocation_context: structured.then_some(1),
        observer: None,
    }
}

fn request(command: u16, flags: u16, offset_bytes: u64, len_bytes: u32) -> Request {
    Request {
        flags,
        command,
        cookie: 1,
        offset_bytes,
        len_bytes,
    }
}

fn error_of(ctx: &Context, request: Request) -> Option<u32> {
    validate(ctx, &request).err().map(|f| f.error)
}

#[test]
fn unknown_commands_and_flags_are_einval() {
    let ctx = context(Caps::all(), false, true);
    assert_eq!(error_of(&ctx, request(42, 0, 0, 4096)), Some(err::EINVAL));
    assert_eq!(
        error_of(&ctx, request(cmd::READ, 1 << 9, 0, 4096)),
        Some(err::EINVAL)
    );
    assert_eq!(
        error_of(&ctx, request(cmd::WRITE, cmd_flag::NO_HOLE, 0, 4096)),
        Some(err::EINVAL)
    );
    assert_eq!(
        error_of(&ctx, request(cmd::READ, cmd_flag::REQ_ONE, 0, 4096)),
        Some(err::EINVAL)
    );
    // DF is only valid once structured replies are on.
    assert_eq!(
        error_of(&ctx, request(cmd::READ, cmd_flag::DF, 0, 4096)),
        None
    );
    let simple = context(Caps::all(), false, false);
    assert_eq!(
        error_of(&simple, request(cmd::READ, cmd_flag::DF, 0, 4096)),
        Some(err::EINVAL)
    );
    // FUA is accepted on every command.
    assert_eq!(
        error_of(&ctx, request(cmd::READ, cmd_flag::FUA, 0, 4096)),
        None
    );
}

#[test]
fn range_errors_depend_on_the_command() {
    let ctx = context(Caps::all(), false, true);
    let past = SIZE;
    assert_eq!(
        error_of(&ctx, request(cmd::WRITE, 0, past, 4096)),
        Some(err::ENOSPC)
    );
    assert_eq!(
        error_of(&ctx, request(cmd::WRITE_ZEROES, 0, past, 4096)),
        Some(err::ENOSPC)
    );
    assert_eq!(
        error_of(&ctx, request(cmd::READ, 0, past, 4096)),
        Some(err::EINVAL)
    );
    assert_eq!(
        error_of(&ctx, request(cmd::TRIM, 0, past, 4096)),
        Some(err::EINVAL)
    );
    assert_eq!(
        error_of(&ctx, request(cmd::BLOCK_STATUS, 0, past, 4096)),
        Some(err::EINVAL)
    );
    assert_eq!(
        error_of(&ctx, request(cmd::CACHE, 0, past, 4096)),
        Some(err::EINVAL)
    );
    assert_eq!(
        error_of(&ctx, request(cmd::READ, 0, u64::MAX, 4096)),
        Some(err::EINVAL)
    );
    assert_eq!(
        error_of(&ctx, request(cmd::READ, 0, SIZE - 4096, 4096)),
        None
    );
}

#[test]
fn misaligned_requests_are_einval() {
    let ctx = context(Caps::all(), false, true);
    for command in [
        cmd::READ,
        cmd::WRITE,
        cmd::TRIM,
        cmd::WRITE_ZEROES,
        cmd::BLOCK_STATUS,
        cmd::CACHE,
    ] {
        assert_eq!(
            error_of(&ctx, request(command, 0, 512, 4096)),
            Some(err::EINVAL)
        );
        assert_eq!(
            error_of(&ctx, request(command, 0, 0, 512)),
            Some(err::EINVAL)
        );
    }
}

#[test]
fn zero_lengths_are_served_except_block_status() {
    let ctx = context(Caps::all(), false, true);
    for command in [
        cmd::READ,
        cmd::WRITE,
        cmd::TRIM,
        cmd::WRITE_ZEROES,
        cmd::CACHE,
    ] {
        assert_eq!(
            error_of(&ctx, request(command, 0, 0, 0)),
            None,
            "{}",
            command_name(command)
        );
    }
    assert_eq!(
        error_of(&ctx, request(cmd::BLOCK_STATUS, 0, 0, 0)),
        Some(err::EINVAL)
    );
}

#[test]
fn read_only_exports_refuse_writes_with_eperm() {
    let ctx = context(Caps::all(), true, true);
    for command in [cmd::WRITE, cmd::TRIM, cmd::WRITE_ZEROES] {
        assert_eq!(
            error_of(&ctx, request(command, 0, 0, 4096)),
            Some(err::EPERM)
        );
    }
    assert_eq!(error_of(&ctx, request(cmd::READ, 0, 0, 4096)), None);
    assert_eq!(error_of(&ctx, request(cmd::FLUSH, 0, 0, 0)), None);
}

#[test]
fn payload_limits_and_capabilities() {
    let ctx = context(Caps::all(), false, true);
    let over = (1 << 20) + 4096;
    // Checked against the payload limit only once the range fits.
    let big = context(Caps::all(), false, true);
    let big = Context {
        size_bytes: 1 << 30,
        ..big
    };
    assert_eq!(
        error_of(&big, request(cmd::READ, 0, 0, over)),
        Some(err::EOVERFLOW)
    );
    assert_eq!(
        error_of(&big, request(cmd::WRITE, 0, 0, over)),
        Some(err::EINVAL)
    );
    // Commands without payload may exceed it.
    assert_eq!(error_of(&big, request(cmd::WRITE_ZEROES, 0, 0, over)), None);
    assert_eq!(error_of(&big, request(cmd::TRIM, 0, 0, over)), None);
    // Fast zero on a device that cannot promise it is refused at once.
    let slow = context(Caps::all() - Caps::FAST_ZERO, false, true);
    assert_eq!(
        error_of(
            &slow,
            request(cmd::WRITE_ZEROES, cmd_flag::FAST_ZERO, 0, 4096)
        ),
        Some(err::ENOTSUP)
    );
    assert_eq!(
        error_of(
            &ctx,
            request(cmd::WRITE_ZEROES, cmd_flag::FAST_ZERO, 0, 4096)
        ),
        None
    );
    let no_trim = context(Caps::all() - Caps::DISCARD, false, true);
    assert_eq!(
        error_of(&no_trim, request(cmd::TRIM, 0, 0, 4096)),
        Some(err::EINVAL)
    );
    // FLUSH must carry zero offset and length.
    assert_eq!(
        error_of(&ctx, request(cmd::FLUSH, 0, 4096, 0)),
        Some(err::EINVAL)
    );
}

#[test]
fn block_status_needs_a_selected_context() {
    let simple = context(Caps::all(), false, false);
    assert_eq!(
        error_of(&simple, request(cmd::BLOCK_STATUS, 0, 0, 4096)),
        Some(err::EINVAL)
    );
    let ctx = context(Caps::all(), false, true);
    assert_eq!(
        validate(
            &ctx,
            &request(cmd::BLOCK_STATUS, cmd_flag::REQ_ONE, 0, 4096)
        ),
        Ok(Op::BlockStatus {
            offset_bytes: 0,
            len_bytes: 4096,
            req_one: true
        })
    );
}

#[test]
fn error_replies_follow_the_negotiation() {
    let failure = Failure::new(err::EINVAL, "nope");
    let simple = context(Caps::all(), false, false);
    let reply = error_reply(&simple, 7, &failure);
    let [Part::Bytes(bytes)] = reply.parts.as_slice() else {
        panic!("one byte part expected");
    };
    assert_eq!(bytes.len(), 16);
    assert_eq!(&bytes[4..8], &22u32.to_be_bytes());
    let structured = context(Caps::all(), false, true);
    let reply = error_reply(&structured, 7, &failure);
    let [Part::Bytes(bytes)] = reply.parts.as_slice() else {
        panic!("one byte part expected");
    };
    assert_eq!(&bytes[0..4], &[0x66, 0x8e, 0x33, 0xef]);
    assert!(bytes.ends_with(b"nope"));
}
