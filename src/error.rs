//! Errors of the FTP/TLS client, each carrying the errno the filesystem returns for it.

use crate::ftp::reply::code;
use std::fmt;
use std::io;

/// An error from the FTP/TLS layer. `Display` gives one line a user can act on.
#[derive(Debug)]
pub enum FtpError {
    /// A socket operation failed (context says which).
    Io { context: String, source: io::Error },
    /// A read or write did not complete within the configured timeout.
    Timeout(String),
    /// The TLS layer refused or failed: untrusted certificate, handshake failure...
    Tls(String),
    /// The server answered a command with a negative (4xx/5xx) reply.
    Reply {
        command: String,
        code: u16,
        text: String,
    },
    /// The server broke the protocol (malformed or oversized reply, bad PASV...).
    Protocol(String),
    /// A download ended without the server's TLS close_notify, or shorter than announced.
    Truncated(String),
    /// The server or the connection went away (421, EOF on the control channel).
    Closed(String),
    /// A bad option, URL or path given by the user.
    Invalid(String),
    /// A name the server's charset (`encoding=`) cannot express.
    Unencodable(String),
    /// A path that cannot be named to the server (ENAMETOOLONG).
    NameTooLong(String),
}

pub type Result<T> = std::result::Result<T, FtpError>;

impl FtpError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                FtpError::Timeout(format!("{context}: timed out"))
            }
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => FtpError::Closed(format!("{context}: {source}")),
            _ => FtpError::Io { context, source },
        }
    }

    /// A refusal made on the server's behalf: it does not offer what `command`
    /// needs (a feature it does not announce), as its 502 would say.
    pub fn not_offered(command: &str, why: impl Into<String>) -> Self {
        FtpError::Reply {
            command: command.to_string(),
            code: code::NOT_IMPLEMENTED,
            text: why.into(),
        }
    }

    /// The FTP reply code when the server refused the command.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            FtpError::Reply { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the server said it does not implement the command (500, 502, 504).
    pub fn is_not_implemented(&self) -> bool {
        self.reply_code().is_some_and(code::not_implemented)
    }

    /// "421 Too many connections", "530 Sorry, the maximum number of clients...":
    /// the server caps connections per user or address.
    pub fn is_too_many_connections(&self) -> bool {
        let t = self.to_string().to_ascii_lowercase();
        self.reply_code() == Some(code::SERVICE_CLOSING)
            || t.contains("too many")
            || t.contains("maximum number")
            || t.contains("max clients")
            || t.contains("connection limit")
    }

    /// True when the connection can no longer be used and must be replaced.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            FtpError::Io { .. }
                | FtpError::Timeout(_)
                | FtpError::Closed(_)
                | FtpError::Protocol(_)
                | FtpError::Truncated(_)
        ) || self.reply_code() == Some(code::SERVICE_CLOSING)
    }

    /// The errno a filesystem operation should return for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FtpError::Reply { code, text, .. } => reply_errno(*code, text),
            FtpError::Timeout(_) => libc::ETIMEDOUT,
            FtpError::Invalid(_) => libc::EINVAL,
            FtpError::Unencodable(_) => libc::EILSEQ,
            FtpError::NameTooLong(_) => libc::ENAMETOOLONG,
            FtpError::Closed(_) => libc::EIO,
            FtpError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            FtpError::Tls(_) | FtpError::Protocol(_) | FtpError::Truncated(_) => libc::EIO,
        }
    }
}

/// Maps a negative FTP reply to an errno, using the text where codes are ambiguous
/// (550 means "not found" on one server and "permission denied" on another).
pub fn reply_errno(reply_code: u16, text: &str) -> i32 {
    let code = reply_code;
    // A data connection that could not be opened or broke (425, 426), a service
    // going away (421): network trouble, whatever the text says ("Operation not
    // permitted" is a socket's errno there, not a permission).
    if matches!(
        code,
        code::SERVICE_CLOSING | code::CANT_OPEN_DATA | code::TRANSFER_ABORTED
    ) {
        return libc::EIO;
    }
    let t = text.to_ascii_lowercase();
    let says = |words: &[&str]| words.iter().any(|w| t.contains(w));
    if says(&["not empty"]) {
        return libc::ENOTEMPTY;
    }
    if says(&["already exists", "file exists", "directory exists"]) {
        return libc::EEXIST;
    }
    if says(&[
        "permission denied",
        "access denied",
        "not permitted",
        "read-only",
        "forbidden",
    ]) {
        return libc::EACCES;
    }
    if says(&[
        "no such file",
        "not found",
        "does not exist",
        "doesn't exist",
        "no such",
    ]) {
        return libc::ENOENT;
    }
    if says(&["name too long", "path too long", "line too long"]) {
        return libc::ENAMETOOLONG;
    }
    if says(&["not a directory"]) {
        return libc::ENOTDIR;
    }
    if says(&["is a directory"]) {
        return libc::EISDIR;
    }
    if says(&["quota", "disk full", "no space", "insufficient storage"]) {
        return libc::ENOSPC;
    }
    match code {
        code::NOT_LOGGED_IN | code::NEED_ACCOUNT_TO_STORE => libc::EACCES,
        code::FILE_UNAVAILABLE => libc::ENOENT,
        code::STORAGE_EXCEEDED => libc::ENOSPC,
        code::NAME_NOT_ALLOWED => libc::EACCES,
        c if code::not_implemented(c) => libc::ENOTSUP,
        _ => libc::EIO,
    }
}

impl fmt::Display for FtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FtpError::Io { context, source } => write!(f, "{context}: {source}"),
            FtpError::Timeout(m) => write!(f, "{m}"),
            FtpError::Tls(m) => write!(f, "TLS: {m}"),
            FtpError::Reply {
                command,
                code,
                text,
            } => {
                write!(f, "server refused {command}: {code} {text}")
            }
            FtpError::Protocol(m) => write!(f, "protocol error: {m}"),
            FtpError::Truncated(m) => write!(f, "transfer truncated: {m}"),
            FtpError::Closed(m) => write!(f, "connection closed: {m}"),
            FtpError::Invalid(m) | FtpError::Unencodable(m) | FtpError::NameTooLong(m) => {
                write!(f, "{m}")
            }
        }
    }
}

impl std::error::Error for FtpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FtpError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_from_replies() {
        assert_eq!(
            reply_errno(550, "foo: No such file or directory"),
            libc::ENOENT
        );
        assert_eq!(reply_errno(550, "foo: Permission denied"), libc::EACCES);
        assert_eq!(reply_errno(550, "Directory not empty"), libc::ENOTEMPTY);
        assert_eq!(reply_errno(550, "foo: File exists"), libc::EEXIST);
        assert_eq!(
            reply_errno(552, "Exceeded storage allocation"),
            libc::ENOSPC
        );
        assert_eq!(reply_errno(502, "Command not implemented"), libc::ENOTSUP);
        assert_eq!(reply_errno(550, "Failed."), libc::ENOENT);
        assert_eq!(
            reply_errno(550, "x: File name too long"),
            libc::ENAMETOOLONG
        );
        assert_eq!(reply_errno(500, "Input line too long."), libc::ENAMETOOLONG);
        assert_eq!(reply_errno(553, "Could not create file."), libc::EACCES);
        assert_eq!(
            reply_errno(
                425,
                "Unable to build data connection: Operation not permitted"
            ),
            libc::EIO
        );
    }

    #[test]
    fn timeouts_are_recognised() {
        let e = FtpError::io("reading reply", io::Error::from(io::ErrorKind::WouldBlock));
        assert!(matches!(e, FtpError::Timeout(_)));
        assert_eq!(e.errno(), libc::ETIMEDOUT);
        assert!(e.is_connection_lost());
    }

    #[test]
    fn refusals_for_too_many_connections_are_recognised() {
        let reply = |code, text: &str| FtpError::Reply {
            command: "connect".into(),
            code,
            text: text.into(),
        };
        assert!(reply(421, "Too many users, try later").is_too_many_connections());
        assert!(reply(
            530,
            "Sorry, the maximum number of clients (3) from your host are already connected."
        )
        .is_too_many_connections());
        assert!(FtpError::Closed(
            "server closed: 421 Too many connections (5) from this IP".into()
        )
        .is_too_many_connections());
        assert!(!reply(530, "Login incorrect.").is_too_many_connections());
        assert!(!FtpError::Tls("certificate has expired".into()).is_too_many_connections());
    }
}
