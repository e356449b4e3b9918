//! Errors of the filesystem layer, and the one place they become errno values.
//!
//! Design: the filesystem logic works over [`super::store::RemoteStore`] and never
//! sees FTP reply codes, TLS or socket errors. A store reports a [`StoreError`] in
//! the filesystem's own terms: refused, and why (no such file, exists, permission,
//! not implemented...); the connection lost (the operation may be repeated, a
//! download resumed); a deadline passed; a local disk error (the spool, the
//! journal). The FTP store translates server replies into it in one place
//! (src/remote/ftp_store.rs), the in-memory stores build it directly, and
//! [`StoreError::errno`] is the only mapping to what a program gets.

use std::fmt;
use std::io;

/// Why a server refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    Exists,
    NotEmpty,
    NotDir,
    IsDir,
    /// Permission, a read-only site, an account without that right.
    Denied,
    /// Quota or disk full on the server.
    NoSpace,
    /// The server has no such command.
    NotImplemented,
    /// Anything else the server said no to.
    Other,
}

#[derive(Debug)]
pub enum StoreError {
    /// The server refused the operation.
    Refused { why: Refusal, message: String },
    /// The server refused to rename an upload into place (an account or a server
    /// without rename permission): uploads then go in place.
    RenameRefused { why: Refusal, message: String },
    /// The connection failed or broke, or the server said "try again": the
    /// operation may be repeated, a download resumed where it stopped.
    Lost(String),
    /// The operation's deadline passed without progress.
    Timeout(String),
    /// Local disk I/O (the spool, the journal) failed.
    Local { context: String, source: io::Error },
    /// A name the server's charset cannot express.
    Unencodable(String),
    /// A path the server cannot be given or cannot hold.
    NameTooLong(String),
    /// A path or argument that cannot be sent at all.
    Invalid(String),
    /// Neither a refusal nor a lost connection (a TLS failure, an internal fault).
    Failed(String),
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

impl StoreError {
    pub fn refused(why: Refusal, message: impl Into<String>) -> Self {
        StoreError::Refused {
            why,
            message: message.into(),
        }
    }

    pub fn local(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Local {
            context: context.into(),
            source,
        }
    }

    /// The errno a filesystem operation returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::Refused { why, .. } | StoreError::RenameRefused { why, .. } => match why {
                Refusal::NotFound => libc::ENOENT,
                Refusal::Exists => libc::EEXIST,
                Refusal::NotEmpty => libc::ENOTEMPTY,
                Refusal::NotDir => libc::ENOTDIR,
                Refusal::IsDir => libc::EISDIR,
                Refusal::Denied => libc::EACCES,
                Refusal::NoSpace => libc::ENOSPC,
                Refusal::NotImplemented => libc::ENOTSUP,
                Refusal::Other => libc::EIO,
            },
            StoreError::Lost(_) | StoreError::Failed(_) => libc::EIO,
            StoreError::Timeout(_) => libc::ETIMEDOUT,
            StoreError::Local { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            StoreError::Unencodable(_) => libc::EILSEQ,
            StoreError::NameTooLong(_) => libc::ENAMETOOLONG,
            StoreError::Invalid(_) => libc::EINVAL,
        }
    }

    /// The server said no (as opposed to a failure on the way there).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::Refused { .. } | StoreError::RenameRefused { .. }
        )
    }

    /// Why the server said no, if it did.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            StoreError::Refused { why, .. } | StoreError::RenameRefused { why, .. } => Some(*why),
            _ => None,
        }
    }

    pub fn is_not_implemented(&self) -> bool {
        self.refusal() == Some(Refusal::NotImplemented)
    }

    /// A download that failed this way may be resumed at its offset on a new
    /// connection; a refusal may not.
    pub fn is_resumable(&self) -> bool {
        matches!(self, StoreError::Lost(_) | StoreError::Timeout(_))
    }

    /// This refusal, as the refusal of a rename into place.
    pub fn into_rename_refusal(self) -> Self {
        match self {
            StoreError::Refused { why, message } => StoreError::RenameRefused { why, message },
            other => other,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Refused { message, .. } => write!(f, "{message}"),
            StoreError::RenameRefused { message, .. } => write!(f, "rename refused: {message}"),
            StoreError::Lost(m)
            | StoreError::Timeout(m)
            | StoreError::Unencodable(m)
            | StoreError::NameTooLong(m)
            | StoreError::Invalid(m)
            | StoreError::Failed(m) => write!(f, "{m}"),
            StoreError::Local { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// An errno to return to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<StoreError> for Errno {
    fn from(e: StoreError) -> Self {
        log::debug!("remote error: {e}");
        Errno(e.errno())
    }
}

pub type FsResult<T> = std::result::Result<T, Errno>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_of_each_kind() {
        let cases = [
            (StoreError::refused(Refusal::NotFound, "x"), libc::ENOENT),
            (StoreError::refused(Refusal::Denied, "x"), libc::EACCES),
            (
                StoreError::refused(Refusal::NotImplemented, "x"),
                libc::ENOTSUP,
            ),
            (StoreError::Lost("reset".into()), libc::EIO),
            (StoreError::Timeout("stall".into()), libc::ETIMEDOUT),
            (
                StoreError::local("spool", io::Error::from_raw_os_error(libc::ENOSPC)),
                libc::ENOSPC,
            ),
            (StoreError::Unencodable("☃".into()), libc::EILSEQ),
        ];
        for (e, errno) in cases {
            assert_eq!(e.errno(), errno, "{e}");
        }
        let r = StoreError::refused(Refusal::Denied, "550 no").into_rename_refusal();
        assert!(r.is_refusal() && matches!(r, StoreError::RenameRefused { .. }));
        assert_eq!(r.errno(), libc::EACCES);
        assert!(StoreError::Lost("x".into()).is_resumable());
        assert!(!StoreError::refused(Refusal::NotFound, "x").is_resumable());
    }
}
