//! A minimal NBD client over a plain `TcpStream`, built from the protocol
//! document's byte layouts (deliberately not from the server's codec, so a
//! wrong constant on one side cannot hide behind the same one on the other).
//! Every read is bounded by [`IO_TIMEOUT`].

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::IO_TIMEOUT;

pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_MAGIC: u32 = 0x6744_6698;
pub const CHUNK_MAGIC: u32 = 0x668e_33ef;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const CHUNK_NONE: u16 = 0;
pub const CHUNK_OFFSET_DATA: u16 = 1;
pub const CHUNK_OFFSET_HOLE: u16 = 2;
pub const CHUNK_BLOCK_STATUS: u16 = 5;
pub const CHUNK_ERROR: u16 = 0x8001;
pub const FLAG_DONE: u16 = 1;

pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const ESHUTDOWN: u32 = 108;

/// One option reply.
#[derive(Debug)]
pub struct OptionReply {
    pub option: u32,
    pub reply_type: u32,
    pub data: Vec<u8>,
}

/// One transmission reply: simple, or one structured chunk.
#[derive(Debug)]
pub enum Reply {
    Simple {
        error: u32,
        cookie: u64,
        data: Vec<u8>,
    },
    Chunk {
        flags: u16,
        kind: u16,
        cookie: u64,
        payload: Vec<u8>,
    },
}

impl Reply {
    pub fn cookie(&self) -> u64 {
        match self {
            Reply::Simple { cookie, .. } | Reply::Chunk { cookie, .. } => *cookie,
        }
    }

    /// The error of a simple reply or an error chunk (0 for success).
    pub fn error(&self) -> u32 {
        match self {
            Reply::Simple { error, .. } => *error,
            Reply::Chunk { kind, payload, .. } if kind & 0x8000 != 0 => be32(&payload[0..4]),
            Reply::Chunk { .. } => 0,
        }
    }
}

pub fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

pub fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

pub fn be64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(array)
}

/// `NBD_OPT_INFO`/`GO` data.
pub fn info_request(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for info in infos {
        data.extend_from_slice(&info.to_be_bytes());
    }
    data
}

/// `NBD_OPT_*_META_CONTEXT` data.
pub fn meta_request(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for query in queries {
        data.extend_from_slice(&(query.len() as u32).to_be_bytes());
        data.extend_from_slice(query.as_bytes());
    }
    data
}

pub struct RawClient {
    pub stream: TcpStream,
    /// Simple-reply mode needs to know which cookies carry read data.
    read_lens: std::collections::HashMap<u64, usize>,
}

impl RawClient {
    /// Connects and checks the greeting, without answering it yet.
    pub async fn greeted(addr: SocketAddr) -> RawClient {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut client = RawClient {
            stream,
            read_lens: Default::default(),
        };
        let greeting = client.read_exact(18).await;
        assert_eq!(&greeting[0..8], b"NBDMAGIC");
        assert_eq!(be64(&greeting[8..16]), IHAVEOPT);
        assert_eq!(be16(&greeting[16..18]), 0b11, "FIXED_NEWSTYLE | NO_ZEROES");
        client
    }

    /// Connects with FIXED_NEWSTYLE | NO_ZEROES.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let mut client = RawClient::greeted(addr).await;
        client.send(&3u32.to_be_bytes()).await;
        client
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(bytes))
            .await
            .expect("send in time")
            .expect("send");
    }

    pub async fn read_exact(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        tokio::time::timeout(IO_TIMEOUT, self.stream.read_exact(&mut buf))
            .await
            .expect("server answers in time")
            .expect("server answers");
        buf
    }

    /// True once the server has closed the connection (EOF or reset).
    pub async fn closed_by_server(&mut self) -> bool {
        let mut sink = [0u8; 4096];
        loop {
            match tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut sink)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    pub async fn option(&mut self, option: u32, data: &[u8]) {
        let mut bytes = IHAVEOPT.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(data);
        self.send(&bytes).await;
    }

    pub async fn option_reply(&mut self) -> OptionReply {
        let header = self.read_exact(20).await;
        assert_eq!(be64(&header[0..8]), OPTION_REPLY_MAGIC);
        let len = be32(&header[16..20]) as usize;
        OptionReply {
            option: be32(&header[8..12]),
            reply_type: be32(&header[12..16]),
            data: self.read_exact(len).await,
        }
    }

    /// Sends `option` and collects replies up to the final ACK or error.
    pub async fn option_exchange(&mut self, option: u32, data: &[u8]) -> Vec<OptionReply> {
        self.option(option, data).await;
        let mut replies = Vec::new();
        loop {
            let reply = self.option_reply().await;
            assert_eq!(reply.option, option, "reply echoes the option");
            let last = reply.reply_type == REP_ACK || reply.reply_type & 0x8000_0000 != 0;
            replies.push(reply);
            if last {
                return replies;
            }
        }
    }

    /// Negotiates structured replies (and `base:allocation`) when asked,
    /// then `NBD_OPT_GO`; returns the export size and transmission flags.
    pub async fn go(&mut self, name: &str, structured: bool) -> (u64, u16) {
        if structured {
            let replies = self.option_exchange(OPT_STRUCTURED_REPLY, &[]).await;
            assert_eq!(replies[0].reply_type, REP_ACK);
            let replies = self
                .option_exchange(
                    OPT_SET_META_CONTEXT,
                    &meta_request(name, &["base:allocation"]),
                )
                .await;
            assert_eq!(replies.len(), 2, "one context and an ACK: {replies:?}");
        }
        let replies = self
            .option_exchange(OPT_GO, &info_request(name, &[INFO_BLOCK_SIZE]))
            .await;
        let last = replies.last().expect("GO has replies");
        assert_eq!(last.reply_type, REP_ACK, "GO {name}: {replies:?}");
        let export = replies
            .iter()
            .find(|r| r.reply_type == REP_INFO && be16(&r.data) == INFO_EXPORT)
            .expect("NBD_INFO_EXPORT");
        (be64(&export.data[2..10]), be16(&export.data[10..12]))
    }

    pub async fn request(
        &mut self,
        flags: u16,
        command: u16,
        cookie: u64,
        offset_bytes: u64,
        len_bytes: u32,
        payload: &[u8],
    ) {
        if command == CMD_READ {
            self.read_lens.insert(cookie, len_bytes as usize);
        }
        let mut bytes = REQUEST_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&command.to_be_bytes());
        bytes.extend_from_slice(&cookie.to_be_bytes());
        bytes.extend_from_slice(&offset_bytes.to_be_bytes());
        bytes.extend_from_slice(&len_bytes.to_be_bytes());
        bytes.extend_from_slice(payload);
        self.send(&bytes).await;
    }

    /// The next reply message (one chunk, for structured replies).
    pub async fn reply(&mut self) -> Reply {
        let magic = be32(&self.read_exact(4).await);
        match magic {
            SIMPLE_MAGIC => {
                let rest = self.read_exact(12).await;
                let error = be32(&rest[0..4]);
                let cookie = be64(&rest[4..12]);
                let data_len = match self.read_lens.remove(&cookie) {
                    Some(len) if error == 0 => len,
                    _ => 0,
                };
                let data = self.read_exact(data_len).await;
                Reply::Simple {
                    error,
                    cookie,
                    data,
                }
            }
            CHUNK_MAGIC => {
                let rest = self.read_exact(16).await;
                let len = be32(&rest[12..16]) as usize;
                Reply::Chunk {
                    flags: be16(&rest[0..2]),
                    kind: be16(&rest[2..4]),
                    cookie: be64(&rest[4..12]),
                    payload: self.read_exact(len).await,
                }
            }
            other => panic!("unexpected reply magic {other:#x}"),
        }
    }

    /// Every message of one complete reply (up to a simple reply or DONE).
    pub async fn full_reply(&mut self) -> Vec<Reply> {
        let mut messages = Vec::new();
        loop {
            let reply = self.reply().await;
            let done = match &reply {
                Reply::Simple { .. } => true,
                Reply::Chunk { flags, .. } => flags & FLAG_DONE != 0,
            };
            messages.push(reply);
            if done {
                return messages;
            }
        }
    }
}
