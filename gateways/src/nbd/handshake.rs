//! The fixed newstyle handshake: greeting, client flags, option haggling,
//! until the client enters transmission (`NBD_OPT_GO`,
//! `NBD_OPT_EXPORT_NAME`) or leaves.
//!
//! ```text
//!  S: NBDMAGIC IHAVEOPT flags(FIXED_NEWSTYLE|NO_ZEROES)
//!  C: client flags                   unknown bits -> close
//!  C: IHAVEOPT option len data  ─┐   bad magic, len > 64 KiB -> close
//!  S: option reply(ies)         ─┘   repeated; errors keep the session
//! ```
//!
//! Rules followed here, from the protocol document:
//! - every option but `EXPORT_NAME` gets a reply; unknown ones
//!   `NBD_REP_ERR_UNSUP`, malformed ones `NBD_REP_ERR_INVALID`, and the
//!   session goes on;
//! - the server hangs up only where it must or may: unknown client flags,
//!   a bad option magic, an option length large enough to be abuse, an
//!   `EXPORT_NAME` it cannot satisfy (that option has no error reply),
//!   `NBD_OPT_ABORT`, and shutdown (after `NBD_REP_ERR_SHUTDOWN`);
//! - there is no TLS yet, so the server runs in the spec's NOTLS mode and
//!   answers `NBD_OPT_STARTTLS` with `NBD_REP_ERR_POLICY`;
//! - `NBD_OPT_SET_META_CONTEXT` replaces the selection even when it fails,
//!   and a selection counts only for the export later chosen by name.

use std::io;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::exports::{Export, ExportError, Exports};
use super::proto::{
    self, client_flag, decode_info_request, decode_meta_context_request, decode_option_header,
    encode_export_name_reply, encode_greeting, encode_info_block_size, encode_info_export,
    encode_info_string, encode_meta_context, encode_option_error, encode_option_reply,
    encode_rep_server, handshake_flag, info, opt, rep, DecodeError, OPTION_HEADER_BYTES,
};
use super::session::{
    block_sizes, transmission_flags, unexportable, Session, BASE_ALLOCATION, BASE_ALLOCATION_ID,
};

/// Largest option payload accepted. The biggest legitimate one is an
/// export name (4 KiB) plus a few metadata queries; anything far beyond is
/// treated as a denial-of-service attempt and ends the connection.
pub(crate) const MAX_OPTION_BYTES: u32 = 64 << 10;

/// How a handshake ended without entering transmission.
#[derive(Debug, Error)]
pub(crate) enum HandshakeError {
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("client flags {0:#x} include flags this server does not know")]
    UnknownClientFlags(u32),
    #[error("option header: {0}")]
    BadOption(DecodeError),
    #[error("option {option} announces {len_bytes} bytes of data, over the {MAX_OPTION_BYTES}-byte limit")]
    OptionTooLong { option: u32, len_bytes: u32 },
    #[error(
        "NBD_OPT_EXPORT_NAME {name:?} cannot be served ({reason}); the option has no error reply"
    )]
    ExportNameRefused { name: String, reason: String },
    #[error("server is shutting down")]
    Shutdown,
}

/// Where a successful handshake leads.
pub(crate) enum Outcome {
    Transmission(Box<Session>),
    /// The client aborted or went away between options.
    Closed,
}

/// What the client selected with `NBD_OPT_SET_META_CONTEXT`.
struct MetaSelection {
    export_name: String,
    allocation: bool,
}

struct Haggle<'a, S> {
    stream: &'a mut S,
    exports: &'a dyn Exports,
    shutdown: &'a watch::Receiver<bool>,
    no_zeroes: bool,
    structured_replies: bool,
    meta: Option<MetaSelection>,
}

enum Step {
    Continue,
    Done(Outcome),
}

/// Runs the handshake on `stream` until transmission starts or the session ends.
pub(crate) async fn negotiate<S>(
    stream: &mut S,
    exports: &dyn Exports,
    shutdown: &watch::Receiver<bool>,
) -> Result<Outcome, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    stream
        .write_all(&encode_greeting(
            handshake_flag::FIXED_NEWSTYLE | handshake_flag::NO_ZEROES,
        ))
        .await?;
    stream.flush().await?;
    let client_flags = match stream.read_u32().await {
        Ok(flags) => flags,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Outcome::Closed),
        Err(e) => return Err(e.into()),
    };
    if client_flags & !client_flag::KNOWN != 0 {
        return Err(HandshakeError::UnknownClientFlags(client_flags));
    }
    let mut haggle = Haggle {
        stream,
        exports,
        shutdown,
        no_zeroes: client_flags & client_flag::NO_ZEROES != 0,
        structured_replies: false,
        meta: None,
    };
    loop {
        if let Step::Done(outcome) = haggle.next_option().await? {
            return Ok(outcome);
        }
    }
}

impl<S> Haggle<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn next_option(&mut self) -> Result<Step, HandshakeError> {
        let mut header = [0u8; OPTION_HEADER_BYTES];
        match self.stream.read_exact(&mut header).await {
            Ok(_) => {}
            // Leaving between options is rude but harmless.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Ok(Step::Done(Outcome::Closed))
            }
            Err(e) => return Err(e.into()),
        }
        let header = decode_option_header(&header).map_err(HandshakeError::BadOption)?;
        if header.len_bytes > MAX_OPTION_BYTES {
            return Err(HandshakeError::OptionTooLong {
                option: header.option,
                len_bytes: header.len_bytes,
            });
        }
        let mut data = vec![0u8; header.len_bytes as usize];
        self.stream.read_exact(&mut data).await?;
        let option = header.option;
        tracing::debug!(option, len_bytes = header.len_bytes, "NBD option");

        if *self.shutdown.borrow() && option != opt::ABORT {
            // EXPORT_NAME has no error reply: hanging up is the only answer.
            if option != opt::EXPORT_NAME {
                self.error(option, rep::ERR_SHUTDOWN, "server is shutting down")
                    .await?;
            }
            return Err(HandshakeError::Shutdown);
        }
        match option {
            opt::EXPORT_NAME => self.export_name(&data).await,
            opt::ABORT => {
                // The client may already have closed; a failed ACK is fine.
                let _ = self.reply(option, rep::ACK, &[]).await;
                Ok(Step::Done(Outcome::Closed))
            }
            opt::LIST => self.list(&data).await,
            opt::STARTTLS => {
                if data.is_empty() {
                    self.error(
                        option,
                        rep::ERR_POLICY,
                        "TLS is not configured on this server",
                    )
                    .await?;
                } else {
                    self.invalid(option, "NBD_OPT_STARTTLS takes no data")
                        .await?;
                }
                Ok(Step::Continue)
            }
            opt::INFO | opt::GO => self.info_or_go(option, &data).await,
            opt::STRUCTURED_REPLY => {
                if data.is_empty() {
                    self.structured_replies = true;
                    self.reply(option, rep::ACK, &[]).await?;
                } else {
                    self.invalid(option, "NBD_OPT_STRUCTURED_REPLY takes no data")
                        .await?;
                }
                Ok(Step::Continue)
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                self.meta_context(option, &data).await
            }
            _ => {
                tracing::debug!(option, "unsupported NBD option");
                self.error(option, rep::ERR_UNSUP, "option not supported")
                    .await?;
                Ok(Step::Continue)
            }
        }
    }

    async fn reply(&mut self, option: u32, reply_type: u32, payload: &[u8]) -> io::Result<()> {
        self.send(&encode_option_reply(option, reply_type, payload))
            .await
    }

    async fn error(&mut self, option: u32, reply_type: u32, message: &str) -> io::Result<()> {
        self.send(&encode_option_error(option, reply_type, message))
            .await
    }

    async fn invalid(&mut self, option: u32, message: &str) -> io::Result<()> {
        tracing::warn!(option, "invalid NBD option: {message}");
        self.error(option, rep::ERR_INVALID, message).await
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    async fn list(&mut self, data: &[u8]) -> Result<Step, HandshakeError> {
        if !data.is_empty() {
            self.invalid(opt::LIST, "NBD_OPT_LIST takes no data")
                .await?;
            return Ok(Step::Continue);
        }
        let mut out = Vec::new();
        for listing in self.exports.list().await {
            out.extend_from_slice(&encode_option_reply(
                opt::LIST,
                rep::SERVER,
                &encode_rep_server(&listing.name, &listing.description),
            ));
        }
        out.extend_from_slice(&encode_option_reply(opt::LIST, rep::ACK, &[]));
        self.send(&out).await?;
        Ok(Step::Continue)
    }

    /// Opens `name`, turning refusals into the option error to send.
    async fn open(&self, name: &str) -> Result<Export, (u32, String)> {
        match self.exports.open(name).await {
            Ok(export) => match unexportable(&export.device.info()) {
                None => Ok(export),
                Some(reason) => Err((rep::ERR_UNKNOWN, format!("export {name:?}: {reason}"))),
            },
            Err(e @ ExportError::Unknown) => {
                Err((rep::ERR_UNKNOWN, format!("export {name:?}: {e}")))
            }
            Err(e @ ExportError::Busy(_)) => {
                Err((rep::ERR_POLICY, format!("export {name:?}: {e}")))
            }
            Err(e @ ExportError::Failed(_)) => {
                Err((rep::ERR_UNKNOWN, format!("export {name:?}: {e}")))
            }
        }
    }

    fn session(&self, export_name: String, export: Export) -> Session {
        let info = export.device.info();
        let allocation_context = match &self.meta {
            Some(meta) if meta.allocation && meta.export_name == export_name => {
                Some(BASE_ALLOCATION_ID)
            }
            _ => None,
        };
        Session {
            export_name,
            export,
            size_bytes: info.size_bytes,
            transmission_flags: transmission_flags(&info, self.structured_replies),
            sizes: block_sizes(&info),
            structured_replies: self.structured_replies,
            allocation_context,
        }
    }

    async fn export_name(&mut self, data: &[u8]) -> Result<Step, HandshakeError> {
        let name = match proto::decode_string(data, "export name") {
            Ok(name) => name,
            Err(e) => {
                return Err(HandshakeError::ExportNameRefused {
                    name: String::from_utf8_lossy(data).into_owned(),
                    reason: e.to_string(),
                })
            }
        };
        let export = match self.open(&name).await {
            Ok(export) => export,
            Err((_, reason)) => return Err(HandshakeError::ExportNameRefused { name, reason }),
        };
        let session = self.session(name, export);
        self.send(&encode_export_name_reply(
            session.size_bytes,
            session.transmission_flags,
            self.no_zeroes,
        ))
        .await?;
        Ok(Step::Done(Outcome::Transmission(Box::new(session))))
    }

    async fn info_or_go(&mut self, option: u32, data: &[u8]) -> Result<Step, HandshakeError> {
        let request = match decode_info_request(data) {
            Ok(request) => request,
            Err(e) => {
                self.invalid(option, &e.to_string()).await?;
                return Ok(Step::Continue);
            }
        };
        let export = match self.open(&request.export_name).await {
            Ok(export) => export,
            Err((reply_type, message)) => {
                tracing::debug!(option, "export refused: {message}");
                self.error(option, reply_type, &message).await?;
                return Ok(Step::Continue);
            }
        };
        let session = self.session(request.export_name, export);
        let mut out = Vec::new();
        let mut info_reply = |payload: &[u8]| {
            out.extend_from_slice(&encode_option_reply(option, rep::INFO, payload));
        };
        info_reply(&encode_info_export(
            session.size_bytes,
            session.transmission_flags,
        ));
        // Sent whether or not it was asked for: the constraints are not the
        // defaults, so a client that can read them should see them.
        info_reply(&encode_info_block_size(session.sizes));
        if request.info_types.contains(&info::NAME) {
            info_reply(&encode_info_string(info::NAME, &session.export_name));
        }
        if request.info_types.contains(&info::DESCRIPTION) {
            info_reply(&encode_info_string(
                info::DESCRIPTION,
                &session.export.description,
            ));
        }
        out.extend_from_slice(&encode_option_reply(option, rep::ACK, &[]));
        if option == opt::INFO {
            // NBD_OPT_INFO only looks: the export (and its guard) goes
            // before the client hears the answer.
            drop(session);
            self.send(&out).await?;
            return Ok(Step::Continue);
        }
        self.send(&out).await?;
        tracing::debug!(export = %session.export_name, "entering transmission");
        Ok(Step::Done(Outcome::Transmission(Box::new(session))))
    }

    async fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<Step, HandshakeError> {
        let setting = option == opt::SET_META_CONTEXT;
        if setting {
            self.meta = None;
        }
        let request = match decode_meta_context_request(data) {
            Ok(request) => request,
            Err(e) => {
                self.invalid(option, &e.to_string()).await?;
                return Ok(Step::Continue);
            }
        };
        if !self.structured_replies {
            self.invalid(
                option,
                "metadata contexts need NBD_OPT_STRUCTURED_REPLY first",
            )
            .await?;
            return Ok(Step::Continue);
        }
        let allocation = match allocation_selected(&request.queries, !setting) {
            Ok(allocation) => allocation,
            Err(message) => {
                self.invalid(option, &message).await?;
                return Ok(Step::Continue);
            }
        };
        let mut out = Vec::new();
        if allocation {
            // IDs in a LIST reply are reserved and SHOULD be zero.
            let id = if setting { BASE_ALLOCATION_ID } else { 0 };
            out.extend_from_slice(&encode_option_reply(
                option,
                rep::META_CONTEXT,
                &encode_meta_context(id, BASE_ALLOCATION),
            ));
        }
        out.extend_from_slice(&encode_option_reply(option, rep::ACK, &[]));
        self.send(&out).await?;
        if setting {
            self.meta = Some(MetaSelection {
                export_name: request.export_name,
                allocation,
            });
        }
        Ok(Step::Continue)
    }
}

/// Whether `queries` select (or, when `listing`, list) `base:allocation`,
/// the only context this server has.
///
/// - no query: listing returns everything, setting selects nothing;
/// - `base:` is a wildcard when listing and ignored when setting;
/// - unknown leaves of `base:` and unknown namespaces are ignored;
/// - a query without a namespace colon is invalid.
pub(crate) fn allocation_selected(queries: &[String], listing: bool) -> Result<bool, String> {
    if queries.is_empty() {
        return Ok(listing);
    }
    let mut selected = false;
    for query in queries {
        let Some((namespace, leaf)) = query.split_once(':') else {
            return Err(format!("metadata query {query:?} has no namespace"));
        };
        if namespace.is_empty() {
            return Err(format!("metadata query {query:?} has an empty namespace"));
        }
        if namespace == "base" && (leaf == "allocation" || (listing && leaf.is_empty())) {
            selected = true;
        }
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queries(list: &[&str]) -> Vec<String> {
        list.iter().map(|q| q.to_string()).collect()
    }

    #[test]
    fn meta_context_queries_follow_the_base_namespace_rules() {
        assert_eq!(allocation_selected(&[], true), Ok(true));
        assert_eq!(allocation_selected(&[], false), Ok(false));
        assert_eq!(allocation_selected(&queries(&["base:"]), true), Ok(true));
        assert_eq!(allocation_selected(&queries(&["base:"]), false), Ok(false));
        assert_eq!(
            allocation_selected(&queries(&["base:allocation"]), false),
            Ok(true)
        );
        assert_eq!(
            allocation_selected(&queries(&["base:other"]), true),
            Ok(false)
        );
        assert_eq!(
            allocation_selected(&queries(&["qemu:dirty-bitmap:x", "base:allocation"]), false),
            Ok(true)
        );
        assert_eq!(allocation_selected(&queries(&["x-foo:"]), true), Ok(false));
        assert!(allocation_selected(&queries(&["nocolon"]), true).is_err());
        assert!(allocation_selected(&queries(&[":leaf"]), false).is_err());
    }
}
