//! The one error type of the data path.
//!
//! A [`BlockError`] carries a small [`ErrorKind`] (what callers branch on),
//! a context string (which device, which operation, which offset) and an
//! optional source (the OS error or lower-layer detail). This is the one place
//! that maps a kind to an errno; the gateways translate errno values into
//! their protocol's codes.

use std::fmt;

/// What went wrong, as far as a caller needs to know to react.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The device failed the I/O (media error, lost disk, short transfer).
    Io,
    /// The pool has no free extent for a new allocation.
    NoSpace,
    /// The request reaches past the end of the device.
    OutOfRange,
    /// Offset or length is not a multiple of the device's block size.
    Unaligned,
    /// The operation or flag is not offered by this device.
    Unsupported,
    /// The device was opened read-only.
    ReadOnly,
    /// Stored data or metadata failed validation.
    Corrupt,
    /// The resource is in use by someone else.
    Busy,
    /// A flush failed earlier; the device refuses all further I/O because
    /// what is durable is no longer known.
    Poisoned,
    /// The request itself is malformed.
    InvalidArgument,
    /// The write lease was lost or superseded (a newer epoch exists).
    Fenced,
    /// The thing asked for does not exist.
    NotFound,
    /// The service is shutting down.
    Shutdown,
    /// A broken internal invariant: a bug, reported rather than hidden.
    Internal,
    /// The layout cannot take the write before the volume commits (its
    /// records of mirror writes fill a journal ring until then), and will
    /// not wait for that while the extent is held. The volume commits and
    /// tries again; a client never sees it.
    NeedsCommit,
}

impl ErrorKind {
    /// The errno that best describes this kind.
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::Io | ErrorKind::Corrupt | ErrorKind::Poisoned | ErrorKind::Internal => {
                libc::EIO
            }
            ErrorKind::NoSpace => libc::ENOSPC,
            ErrorKind::OutOfRange | ErrorKind::Unaligned | ErrorKind::InvalidArgument => {
                libc::EINVAL
            }
            ErrorKind::Unsupported => libc::EOPNOTSUPP,
            ErrorKind::ReadOnly => libc::EROFS,
            ErrorKind::Busy => libc::EBUSY,
            ErrorKind::Fenced => libc::ESTALE,
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Shutdown => libc::ESHUTDOWN,
            ErrorKind::NeedsCommit => libc::EAGAIN,
        }
    }

    /// A short description, free of paths and offsets: safe to show to a
    /// remote client.
    pub fn description(self) -> &'static str {
        match self {
            ErrorKind::Io => "I/O error",
            ErrorKind::NoSpace => "no space left in the volume group",
            ErrorKind::OutOfRange => "out of range",
            ErrorKind::Unaligned => "not aligned to the block size",
            ErrorKind::Unsupported => "not supported",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Busy => "busy",
            ErrorKind::Poisoned => "device poisoned by an earlier flush failure",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Fenced => "write lease lost",
            ErrorKind::NotFound => "not found",
            ErrorKind::Shutdown => "shutting down",
            ErrorKind::Internal => "internal error",
            ErrorKind::NeedsCommit => "try again after a commit",
        }
    }
}

/// An error on the data path: kind, context, and the underlying cause.
#[derive(Debug)]
pub struct BlockError {
    kind: ErrorKind,
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type BlockResult<T> = Result<T, BlockError>;

impl BlockError {
    pub fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        BlockError {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// An error caused by `source`, described by `context`.
    pub fn with_source(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        BlockError {
            kind,
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// Classifies an OS error: ENOSPC stays ENOSPC, everything else is I/O.
    pub fn from_io(context: impl Into<String>, err: std::io::Error) -> Self {
        let kind = match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => ErrorKind::NoSpace,
            Some(libc::EOPNOTSUPP) => ErrorKind::Unsupported,
            Some(libc::EROFS) => ErrorKind::ReadOnly,
            _ => ErrorKind::Io,
        };
        BlockError::with_source(kind, context, err)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn errno(&self) -> i32 {
        self.kind.errno()
    }

    pub fn context(&self) -> &str {
        &self.context
    }

    /// Adds an outer context ("volume vg/lv: ...") while keeping kind and source.
    pub fn context_prefix(mut self, outer: impl fmt::Display) -> Self {
        self.context = format!("{outer}: {}", self.context);
        self
    }
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.kind.description())?;
        if let Some(source) = &self.source {
            write!(f, " ({source})")?;
        }
        Ok(())
    }
}

impl std::error::Error for BlockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_are_classified() {
        let full = BlockError::from_io("write", std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.kind(), ErrorKind::NoSpace);
        assert_eq!(full.errno(), libc::ENOSPC);
        let eio = BlockError::from_io("read", std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(eio.kind(), ErrorKind::Io);
    }

    #[test]
    fn display_has_context_kind_and_source_once() {
        let err = BlockError::from_io(
            "pv /x: read at 4096",
            std::io::Error::from_raw_os_error(libc::EIO),
        )
        .context_prefix("volume vg/lv");
        let text = err.to_string();
        assert!(text.starts_with("volume vg/lv: pv /x: read at 4096: I/O error"));
        assert_eq!(text.matches("Input/output error").count(), 1);
    }
}
