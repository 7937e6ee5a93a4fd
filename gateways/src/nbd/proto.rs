//! The NBD wire format: every constant the server uses and the pure encoding
//! and decoding of every message it sends or receives.
//!
//! Nothing here does I/O, so each function is tested byte for byte and the
//! decoders are property-tested against the encoders and against arbitrary
//! input (they must never panic: their input comes straight off a socket).
//! All numbers are big-endian on the wire. Names follow the protocol
//! document (`doc/proto.md` of the reference implementation) with the
//! `NBD_` prefix and the group prefix moved into a module: `NBD_OPT_GO` is
//! [`opt::GO`], `NBD_REP_ERR_UNSUP` is [`rep::ERR_UNSUP`].
//!
//! The module is public and has the client's half of each message too
//! (`encode_request`, `encode_info_request`, ...): the remote-NBD PV leaf
//! is an NBD client and will speak the same format.

use thiserror::Error;

/// `NBDMAGIC`, the first thing the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, sent by the server and before every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Longest string (export name, description, message, context name) the
/// protocol allows.
pub const MAX_STRING_BYTES: usize = 4096;

/// Bytes of a transmission request header.
pub const REQUEST_BYTES: usize = 28;
/// Bytes of an option header (magic, option, length).
pub const OPTION_HEADER_BYTES: usize = 16;

/// Handshake flags (server, 16 bits).
pub mod handshake_flag {
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (32 bits), the client's answer to the handshake flags.
pub mod client_flag {
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    pub const NO_ZEROES: u32 = 1 << 1;
    /// Every flag this server understands; anything else closes the connection.
    pub const KNOWN: u32 = FIXED_NEWSTYLE | NO_ZEROES;
}

/// Transmission flags (16 bits), per export.
pub mod transmission_flag {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const ROTATIONAL: u16 = 1 << 4;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_RESIZE: u16 = 1 << 9;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option codes.
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const PEEK_EXPORT: u32 = 4;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types. Errors have bit 31 set.
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    pub const ERR_PLATFORM: u32 = (1 << 31) + 4;
    pub const ERR_TLS_REQD: u32 = (1 << 31) + 5;
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
    pub const ERR_BLOCK_SIZE_REQD: u32 = (1 << 31) + 8;
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// Information types in `NBD_REP_INFO` replies and `NBD_OPT_INFO`/`GO` requests.
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission commands.
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cmd_flag {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk flags and types.
pub mod chunk {
    pub const FLAG_DONE: u16 = 1 << 0;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = (1 << 15) + 1;
    pub const ERROR_OFFSET: u16 = (1 << 15) + 2;
}

/// `base:allocation` status flags.
pub mod state {
    pub const HOLE: u32 = 1 << 0;
    pub const ZERO: u32 = 1 << 1;
}

/// Error values of the transmission phase (deliberately not the host's errno).
pub mod err {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

/// Translates a host errno (from `BlockError::errno`) into an NBD error.
///
/// The protocol allows only eight values. Errors that blame the request map
/// to `EINVAL`; everything else the client cannot fix (a lost lease, a busy
/// or missing backing object, an unknown errno) is `EIO`, because `EINVAL`
/// would tell the client it sent something wrong. `ENOTSUP` is returned
/// faithfully here; the caller narrows it, since the protocol reserves it
/// for fast-zero refusals.
pub fn nbd_error_from_errno(errno: i32) -> u32 {
    match errno {
        libc::EPERM | libc::EACCES | libc::EROFS => err::EPERM,
        libc::ENOMEM => err::ENOMEM,
        libc::EINVAL | libc::ERANGE => err::EINVAL,
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => err::ENOSPC,
        libc::EOVERFLOW => err::EOVERFLOW,
        libc::EOPNOTSUPP => err::ENOTSUP,
        libc::ESHUTDOWN => err::ESHUTDOWN,
        _ => err::EIO,
    }
}

/// Why bytes from the client could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("bad magic {found:#x}")]
    BadMagic { found: u64 },
    #[error("{0} is truncated")]
    Truncated(&'static str),
    #[error("{0} has trailing bytes")]
    Trailing(&'static str),
    #[error("{what} is {len_bytes} bytes, over the {MAX_STRING_BYTES}-byte string limit")]
    StringTooLong {
        what: &'static str,
        len_bytes: usize,
    },
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} contains a NUL character")]
    Nul(&'static str),
}

/// A bounds-checked, big-endian cursor over bytes from the client.
struct Cursor<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Cursor { bytes, what }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Truncated(self.what));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A length-prefixed (32-bit) protocol string.
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        if len > MAX_STRING_BYTES {
            return Err(DecodeError::StringTooLong {
                what,
                len_bytes: len,
            });
        }
        let bytes = self.take(len)?;
        decode_string(bytes, what)
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.what))
        }
    }
}

/// Validates a protocol string: UTF-8, no NUL, at most 4096 bytes.
pub fn decode_string(bytes: &[u8], what: &'static str) -> Result<String, DecodeError> {
    if bytes.len() > MAX_STRING_BYTES {
        return Err(DecodeError::StringTooLong {
            what,
            len_bytes: bytes.len(),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8(what))?;
    if text.contains('\0') {
        return Err(DecodeError::Nul(what));
    }
    Ok(text.to_owned())
}

/// Cuts `text` to at most [`MAX_STRING_BYTES`] on a character boundary, so
/// a long error message never breaks the string rule.
pub fn clamp_string(text: &str) -> &str {
    if text.len() <= MAX_STRING_BYTES {
        return text;
    }
    let mut end = MAX_STRING_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

// ---------------------------------------------------------------- handshake

/// The server's opening: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_greeting(handshake_flags: u16) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    out
}

/// The header of one client option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len_bytes: u32,
}

pub fn encode_option_header(header: OptionHeader) -> [u8; OPTION_HEADER_BYTES] {
    let mut out = [0u8; OPTION_HEADER_BYTES];
    out[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[8..12].copy_from_slice(&header.option.to_be_bytes());
    out[12..16].copy_from_slice(&header.len_bytes.to_be_bytes());
    out
}

pub fn decode_option_header(
    bytes: &[u8; OPTION_HEADER_BYTES],
) -> Result<OptionHeader, DecodeError> {
    let mut cursor = Cursor::new(bytes, "option header");
    let magic = cursor.u64()?;
    if magic != IHAVEOPT {
        return Err(DecodeError::BadMagic { found: magic });
    }
    Ok(OptionHeader {
        option: cursor.u32()?,
        len_bytes: cursor.u32()?,
    })
}

/// One option reply: header and payload.
pub fn encode_option_reply(option: u32, reply_type: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + payload.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An option error reply carrying a message for a human.
pub fn encode_option_error(option: u32, reply_type: u32, message: &str) -> Vec<u8> {
    debug_assert!(reply_type & (1 << 31) != 0, "not an error reply type");
    encode_option_reply(option, reply_type, clamp_string(message).as_bytes())
}

/// `NBD_REP_SERVER` payload: name, then the description for humans.
pub fn encode_rep_server(name: &str, description: &str) -> Vec<u8> {
    let name = clamp_string(name);
    let description = clamp_string(description);
    let mut out = Vec::with_capacity(4 + name.len() + description.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(description.as_bytes());
    out
}

/// `NBD_INFO_EXPORT` payload (also the body of the `NBD_OPT_EXPORT_NAME` reply).
pub fn encode_info_export(size_bytes: u64, transmission_flags: u16) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0..2].copy_from_slice(&info::EXPORT.to_be_bytes());
    out[2..10].copy_from_slice(&size_bytes.to_be_bytes());
    out[10..12].copy_from_slice(&transmission_flags.to_be_bytes());
    out
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` payload.
pub fn encode_info_string(info_type: u16, text: &str) -> Vec<u8> {
    let text = clamp_string(text);
    let mut out = Vec::with_capacity(2 + text.len());
    out.extend_from_slice(&info_type.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// The three size constraints of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub min_bytes: u32,
    pub preferred_bytes: u32,
    pub max_payload_bytes: u32,
}

/// `NBD_INFO_BLOCK_SIZE` payload.
pub fn encode_info_block_size(sizes: BlockSizes) -> [u8; 14] {
    let mut out = [0u8; 14];
    out[0..2].copy_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    out[2..6].copy_from_slice(&sizes.min_bytes.to_be_bytes());
    out[6..10].copy_from_slice(&sizes.preferred_bytes.to_be_bytes());
    out[10..14].copy_from_slice(&sizes.max_payload_bytes.to_be_bytes());
    out
}

/// `NBD_REP_META_CONTEXT` payload.
pub fn encode_meta_context(context_id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&context_id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// The reply that ends `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero
/// bytes unless the client negotiated `NO_ZEROES`.
pub fn encode_export_name_reply(
    size_bytes: u64,
    transmission_flags: u16,
    no_zeroes: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + 124);
    out.extend_from_slice(&size_bytes.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        out.resize(10 + 124, 0);
    }
    out
}

/// Payload of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub export_name: String,
    pub info_types: Vec<u16>,
}

pub fn encode_info_request(request: &InfoRequest) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(request.export_name.len() as u32).to_be_bytes());
    out.extend_from_slice(request.export_name.as_bytes());
    out.extend_from_slice(&(request.info_types.len() as u16).to_be_bytes());
    for info_type in &request.info_types {
        out.extend_from_slice(&info_type.to_be_bytes());
    }
    out
}

pub fn decode_info_request(payload: &[u8]) -> Result<InfoRequest, DecodeError> {
    let mut cursor = Cursor::new(payload, "NBD_OPT_INFO/GO data");
    let export_name = cursor.string("export name")?;
    let count = cursor.u16()?;
    let mut info_types = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        info_types.push(cursor.u16()?);
    }
    cursor.finish()?;
    Ok(InfoRequest {
        export_name,
        info_types,
    })
}

/// Payload of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export_name: String,
    pub queries: Vec<String>,
}

pub fn encode_meta_context_request(request: &MetaContextRequest) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(request.export_name.len() as u32).to_be_bytes());
    out.extend_from_slice(request.export_name.as_bytes());
    out.extend_from_slice(&(request.queries.len() as u32).to_be_bytes());
    for query in &request.queries {
        out.extend_from_slice(&(query.len() as u32).to_be_bytes());
        out.extend_from_slice(query.as_bytes());
    }
    out
}

pub fn decode_meta_context_request(payload: &[u8]) -> Result<MetaContextRequest, DecodeError> {
    let mut cursor = Cursor::new(payload, "meta context data");
    let export_name = cursor.string("export name")?;
    let count = cursor.u32()?;
    // Each query takes at least its 4-byte length: a count beyond that is
    // a lie, and trusting it would size an allocation from client input.
    if count as usize > cursor.bytes.len() / 4 {
        return Err(DecodeError::Truncated("meta context queries"));
    }
    let mut queries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        queries.push(cursor.string("meta context query")?);
    }
    cursor.finish()?;
    Ok(MetaContextRequest {
        export_name,
        queries,
    })
}

// ------------------------------------------------------------- transmission

/// One transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset_bytes: u64,
    pub len_bytes: u32,
}

pub fn encode_request(request: &Request) -> [u8; REQUEST_BYTES] {
    let mut out = [0u8; REQUEST_BYTES];
    out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&request.flags.to_be_bytes());
    out[6..8].copy_from_slice(&request.command.to_be_bytes());
    out[8..16].copy_from_slice(&request.cookie.to_be_bytes());
    out[16..24].copy_from_slice(&request.offset_bytes.to_be_bytes());
    out[24..28].copy_from_slice(&request.len_bytes.to_be_bytes());
    out
}

pub fn decode_request(bytes: &[u8; REQUEST_BYTES]) -> Result<Request, DecodeError> {
    let mut cursor = Cursor::new(bytes, "request");
    let magic = cursor.u32()?;
    if magic != REQUEST_MAGIC {
        return Err(DecodeError::BadMagic {
            found: u64::from(magic),
        });
    }
    Ok(Request {
        flags: cursor.u16()?,
        command: cursor.u16()?,
        cookie: cursor.u64()?,
        offset_bytes: cursor.u64()?,
        len_bytes: cursor.u32()?,
    })
}

/// A simple reply header (followed by read data on a successful read).
pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A structured reply chunk header.
pub fn encode_chunk_header(flags: u16, chunk_type: u16, cookie: u64, len_bytes: u32) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&len_bytes.to_be_bytes());
    out
}

/// `NBD_REPLY_TYPE_NONE` with `DONE`: success with nothing more to say.
pub fn encode_none_chunk(cookie: u64) -> [u8; 20] {
    encode_chunk_header(chunk::FLAG_DONE, chunk::NONE, cookie, 0)
}

/// Header and offset of an `OFFSET_DATA` chunk; `data_len_bytes` of data follow.
pub fn encode_offset_data_header(
    flags: u16,
    cookie: u64,
    offset_bytes: u64,
    data_len_bytes: u32,
) -> [u8; 28] {
    assert!(
        data_len_bytes > 0,
        "an OFFSET_DATA chunk carries at least one byte"
    );
    assert!(
        data_len_bytes <= u32::MAX - 8,
        "OFFSET_DATA of {data_len_bytes} bytes overflows the chunk length"
    );
    let mut out = [0u8; 28];
    out[0..20].copy_from_slice(&encode_chunk_header(
        flags,
        chunk::OFFSET_DATA,
        cookie,
        8 + data_len_bytes,
    ));
    out[20..28].copy_from_slice(&offset_bytes.to_be_bytes());
    out
}

/// An `OFFSET_HOLE` chunk: `hole_len_bytes` read as zeroes from `offset_bytes`.
pub fn encode_offset_hole(
    flags: u16,
    cookie: u64,
    offset_bytes: u64,
    hole_len_bytes: u32,
) -> [u8; 32] {
    assert!(hole_len_bytes > 0, "a hole chunk must be nonzero");
    let mut out = [0u8; 32];
    out[0..20].copy_from_slice(&encode_chunk_header(flags, chunk::OFFSET_HOLE, cookie, 12));
    out[20..28].copy_from_slice(&offset_bytes.to_be_bytes());
    out[28..32].copy_from_slice(&hole_len_bytes.to_be_bytes());
    out
}

/// A final `NBD_REPLY_TYPE_ERROR` chunk with a message for a human.
pub fn encode_error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    assert!(error != 0, "an error chunk carries a nonzero error");
    let message = clamp_string(message);
    let mut out = Vec::with_capacity(26 + message.len());
    out.extend_from_slice(&encode_chunk_header(
        chunk::FLAG_DONE,
        chunk::ERROR,
        cookie,
        6 + message.len() as u32,
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out
}

/// One block status descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    pub len_bytes: u32,
    pub flags: u32,
}

/// An `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for one metadata context.
pub fn encode_block_status_chunk(
    flags: u16,
    cookie: u64,
    context_id: u32,
    descriptors: &[Descriptor],
) -> Vec<u8> {
    assert!(
        !descriptors.is_empty(),
        "block status needs at least one descriptor"
    );
    let payload_bytes = 4 + 8 * descriptors.len();
    let mut out = Vec::with_capacity(20 + payload_bytes);
    out.extend_from_slice(&encode_chunk_header(
        flags,
        chunk::BLOCK_STATUS,
        cookie,
        u32::try_from(payload_bytes).expect("descriptor count is capped far below 2^29"),
    ));
    out.extend_from_slice(&context_id.to_be_bytes());
    for descriptor in descriptors {
        assert!(
            descriptor.len_bytes > 0,
            "block status descriptors are nonzero"
        );
        out.extend_from_slice(&descriptor.len_bytes.to_be_bytes());
        out.extend_from_slice(&descriptor.flags.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_flags() {
        let greeting = encode_greeting(handshake_flag::FIXED_NEWSTYLE | handshake_flag::NO_ZEROES);
        assert_eq!(&greeting[0..8], b"NBDMAGIC");
        assert_eq!(&greeting[8..16], b"IHAVEOPT");
        assert_eq!(&greeting[16..18], &[0, 3]);
    }

    #[test]
    fn option_reply_magic_matches_the_spec() {
        let reply = encode_option_reply(opt::LIST, rep::ACK, &[]);
        assert_eq!(
            reply,
            [0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0]
        );
    }

    #[test]
    fn option_header_rejects_bad_magic() {
        let mut bytes = encode_option_header(OptionHeader {
            option: opt::GO,
            len_bytes: 7,
        });
        assert_eq!(
            decode_option_header(&bytes),
            Ok(OptionHeader {
                option: opt::GO,
                len_bytes: 7
            })
        );
        bytes[0] ^= 1;
        assert!(matches!(
            decode_option_header(&bytes),
            Err(DecodeError::BadMagic { .. })
        ));
    }

    #[test]
    fn export_name_reply_pads_unless_no_zeroes() {
        assert_eq!(encode_export_name_reply(1 << 20, 1, false).len(), 134);
        let short = encode_export_name_reply(1 << 20, 0x0d01, true);
        assert_eq!(short, [0, 0, 0, 0, 0, 0x10, 0, 0, 0x0d, 0x01]);
    }

    #[test]
    fn info_payloads_have_spec_lengths() {
        assert_eq!(
            encode_info_export(4096, 1),
            [0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 1]
        );
        let sizes = BlockSizes {
            min_bytes: 4096,
            preferred_bytes: 4096,
            max_payload_bytes: 32 << 20,
        };
        assert_eq!(
            encode_info_block_size(sizes),
            [0, 3, 0, 0, 0x10, 0, 0, 0, 0x10, 0, 0x02, 0, 0, 0]
        );
        assert_eq!(encode_info_string(info::NAME, "vg/lv"), b"\0\x01vg/lv");
        assert_eq!(encode_info_string(info::DESCRIPTION, "").len(), 2);
    }

    #[test]
    fn info_request_length_must_be_exact() {
        let request = InfoRequest {
            export_name: "vg0/lv0".into(),
            info_types: vec![info::BLOCK_SIZE, info::NAME],
        };
        let bytes = encode_info_request(&request);
        assert_eq!(decode_info_request(&bytes), Ok(request));
        assert_eq!(
            decode_info_request(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated("NBD_OPT_INFO/GO data"))
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode_info_request(&long),
            Err(DecodeError::Trailing("NBD_OPT_INFO/GO data"))
        );
        // A name length pointing past the payload.
        let lying = [0, 0, 0, 9, b'a', 0, 0];
        assert!(decode_info_request(&lying).is_err());
    }

    #[test]
    fn strings_are_checked() {
        assert_eq!(decode_string(b"ok", "x"), Ok("ok".into()));
        assert_eq!(decode_string(b"a\0b", "x"), Err(DecodeError::Nul("x")));
        assert_eq!(decode_string(&[0xff], "x"), Err(DecodeError::NotUtf8("x")));
        assert!(matches!(
            decode_string(&[b'a'; 4097], "x"),
            Err(DecodeError::StringTooLong { .. })
        ));
        let long = "é".repeat(3000);
        let clamped = clamp_string(&long);
        assert!(clamped.len() <= MAX_STRING_BYTES);
        assert!(long.starts_with(clamped));
    }

    #[test]
    fn meta_context_request_with_absurd_count_is_rejected() {
        let mut bytes = vec![0, 0, 0, 0];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_meta_context_request(&bytes).is_err());
    }

    #[test]
    fn request_round_trips_and_checks_magic() {
        let request = Request {
            flags: cmd_flag::FUA,
            command: cmd::WRITE,
            cookie: 0xdead_beef_0bad_cafe,
            offset_bytes: 1 << 40,
            len_bytes: 65536,
        };
        let mut bytes = encode_request(&request);
        assert_eq!(&bytes[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(decode_request(&bytes), Ok(request));
        bytes[3] = 0x14;
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::BadMagic { found: 0x2560_9514 })
        );
    }

    #[test]
    fn reply_encodings_match_the_spec() {
        assert_eq!(
            encode_simple_reply(err::EINVAL, 7),
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 7]
        );
        let none = encode_none_chunk(9);
        assert_eq!(&none[0..4], &[0x66, 0x8e, 0x33, 0xef]);
        assert_eq!(&none[4..8], &[0, 1, 0, 0]);
        let data = encode_offset_data_header(0, 1, 4096, 512);
        assert_eq!(&data[6..8], &[0, 1]);
        assert_eq!(&data[16..20], &520u32.to_be_bytes());
        assert_eq!(&data[20..28], &4096u64.to_be_bytes());
        let hole = encode_offset_hole(chunk::FLAG_DONE, 1, 0, 8192);
        assert_eq!(&hole[16..20], &12u32.to_be_bytes());
        assert_eq!(&hole[28..32], &8192u32.to_be_bytes());
        let error = encode_error_chunk(3, err::EIO, "boom");
        assert_eq!(&error[6..8], &[0x80, 0x01]);
        assert_eq!(&error[16..20], &10u32.to_be_bytes());
        assert_eq!(&error[20..26], &[0, 0, 0, 5, 0, 4]);
        assert_eq!(&error[26..], b"boom");
        let status = encode_block_status_chunk(
            chunk::FLAG_DONE,
            3,
            1,
            &[Descriptor {
                len_bytes: 4096,
                flags: state::HOLE | state::ZERO,
            }],
        );
        assert_eq!(&status[16..20], &12u32.to_be_bytes());
        assert_eq!(&status[20..], &[0, 0, 0, 1, 0, 0, 0x10, 0, 0, 0, 0, 3]);
    }

    #[test]
    fn errno_mapping_covers_the_protocol_values() {
        assert_eq!(nbd_error_from_errno(30), err::EPERM); // EROFS
        assert_eq!(nbd_error_from_errno(5), err::EIO);
        assert_eq!(nbd_error_from_errno(22), err::EINVAL);
        assert_eq!(nbd_error_from_errno(28), err::ENOSPC);
        assert_eq!(nbd_error_from_errno(122), err::ENOSPC); // EDQUOT
        assert_eq!(nbd_error_from_errno(95), err::ENOTSUP);
        assert_eq!(nbd_error_from_errno(108), err::ESHUTDOWN);
        assert_eq!(nbd_error_from_errno(116), err::EIO); // ESTALE: lease lost
        assert_eq!(nbd_error_from_errno(16), err::EIO); // EBUSY
    }

    fn protocol_string() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9/:_ é-]{0,64}"
    }

    proptest! {
        #[test]
        fn info_request_round_trips(
            export_name in protocol_string(),
            info_types in proptest::collection::vec(any::<u16>(), 0..8),
        ) {
            let request = InfoRequest { export_name, info_types };
            prop_assert_eq!(decode_info_request(&encode_info_request(&request)), Ok(request));
        }

        #[test]
        fn meta_context_request_round_trips(
            export_name in protocol_string(),
            queries in proptest::collection::vec(protocol_string(), 0..6),
        ) {
            let request = MetaContextRequest { export_name, queries };
            prop_assert_eq!(
                decode_meta_context_request(&encode_meta_context_request(&request)),
                Ok(request)
            );
        }

        #[test]
        fn request_round_trips(
            flags in any::<u16>(), command in any::<u16>(), cookie in any::<u64>(),
            offset_bytes in any::<u64>(), len_bytes in any::<u32>(),
        ) {
            let request = Request { flags, command, cookie, offset_bytes, len_bytes };
            prop_assert_eq!(decode_request(&encode_request(&request)), Ok(request));
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_info_request(&bytes);
            let _ = decode_meta_context_request(&bytes);
            let _ = decode_string(&bytes, "fuzz");
        }

        #[test]
        fn error_chunk_length_is_consistent(message in ".{0,5000}") {
            let chunk = encode_error_chunk(1, err::EIO, &message);
            let len = u32::from_be_bytes([chunk[16], chunk[17], chunk[18], chunk[19]]) as usize;
            prop_assert_eq!(chunk.len(), 20 + len);
            let message_len = u16::from_be_bytes([chunk[24], chunk[25]]) as usize;
            prop_assert_eq!(len, 6 + message_len);
            prop_assert!(message_len <= MAX_STRING_BYTES);
        }
    }
}
