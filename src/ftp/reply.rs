//! FTP replies (RFC 959 §4.2) read from untrusted input with bounded sizes.

use crate::error::{FtpError, Result};
use std::io::{self, Read};

/// Longest reply line accepted (bytes, without CRLF).
pub const MAX_LINE_LEN: usize = 8192;
/// Most lines accepted in one multi-line reply (FEAT, HELP, MLST, STAT).
pub const MAX_REPLY_LINES: usize = 4096;
/// Most bytes of text in one reply (a FEAT or STAT of a real server is a few KiB).
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// The reply codes ftpsfs acts on, by name (RFC 959 §4.2.2, RFC 2228, RFC 2428,
/// RFC 3659). Which of them complete which command is `command::Verb::completes`.
pub mod code {
    /// 125: data connection already open; transfer starting.
    pub const ALREADY_OPEN: u16 = 125;
    /// 150: file status okay; about to open the data connection.
    pub const OPENING_DATA: u16 = 150;
    pub const OK: u16 = 200;
    /// 202: command not needed here (a password for an account that has none).
    pub const SUPERFLUOUS: u16 = 202;
    /// 211: system status, the FEAT reply.
    pub const FEATURES: u16 = 211;
    /// 213: file status, the SIZE and MDTM reply.
    pub const FILE_STATUS: u16 = 213;
    /// 220: service ready, the greeting.
    pub const READY: u16 = 220;
    /// 221: closing the control connection (QUIT).
    pub const CLOSING: u16 = 221;
    /// 225: data connection open, no transfer in progress (after ABOR).
    pub const ABORTED: u16 = 225;
    /// 226: closing the data connection; the transfer succeeded.
    pub const TRANSFER_COMPLETE: u16 = 226;
    /// 227: entering passive mode (PASV).
    pub const PASSIVE: u16 = 227;
    /// 229: entering extended passive mode (EPSV).
    pub const EXTENDED_PASSIVE: u16 = 229;
    pub const LOGGED_IN: u16 = 230;
    /// 234: AUTH accepted; the TLS handshake follows.
    pub const AUTH_OK: u16 = 234;
    /// 250: requested file action okay, completed.
    pub const FILE_ACTION_OK: u16 = 250;
    /// 257: "PATHNAME" created (MKD), or the current directory (PWD).
    pub const PATH_CREATED: u16 = 257;
    pub const NEED_PASSWORD: u16 = 331;
    pub const NEED_ACCOUNT: u16 = 332;
    /// 350: requested file action pending further information (REST, RNFR).
    pub const PENDING: u16 = 350;
    /// 421: service not available, closing the control connection.
    pub const SERVICE_CLOSING: u16 = 421;
    /// 425: cannot open the data connection.
    pub const CANT_OPEN_DATA: u16 = 425;
    /// 426: connection closed; transfer aborted.
    pub const TRANSFER_ABORTED: u16 = 426;
    /// 450: file unavailable for now (busy); 451: local error in processing.
    pub const FILE_BUSY: u16 = 450;
    pub const LOCAL_ERROR: u16 = 451;
    /// 500, 502, 504: not understood or not implemented (501: bad arguments).
    pub const NOT_UNDERSTOOD: u16 = 500;
    pub const BAD_ARGUMENTS: u16 = 501;
    pub const NOT_IMPLEMENTED: u16 = 502;
    /// 503: bad sequence of commands (RNTO without an accepted RNFR).
    pub const BAD_SEQUENCE: u16 = 503;
    pub const NOT_IMPLEMENTED_FOR_PARAMETER: u16 = 504;
    pub const NOT_LOGGED_IN: u16 = 530;
    /// 532: an account is needed for storing files.
    pub const NEED_ACCOUNT_TO_STORE: u16 = 532;
    /// 550: file unavailable (not found, no access...; the text tells).
    pub const FILE_UNAVAILABLE: u16 = 550;
    /// 552: exceeded storage allocation.
    pub const STORAGE_EXCEEDED: u16 = 552;
    /// 553: file name not allowed.
    pub const NAME_NOT_ALLOWED: u16 = 553;

    /// True for the replies that say "this server does not do that command".
    pub fn not_implemented(c: u16) -> bool {
        matches!(
            c,
            NOT_UNDERSTOOD | NOT_IMPLEMENTED | NOT_IMPLEMENTED_FOR_PARAMETER
        )
    }
}

/// One complete reply: its code and its text lines (first line without the code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Every line of the reply, the first and last stripped of their `xyz-`/`xyz ` prefix.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn is_preliminary(&self) -> bool {
        (100..200).contains(&self.code)
    }
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    /// 4xx and 5xx: the command was refused (for now, or for good).
    pub fn is_negative(&self) -> bool {
        self.code >= 400
    }
    /// This reply, a refusal of `command`, as the error a caller returns.
    pub fn into_error(self, command: &str) -> FtpError {
        FtpError::Reply {
            command: command.to_string(),
            code: self.code,
            text: self.text(),
        }
    }
    /// The whole text on one line, for messages.
    pub fn text(&self) -> String {
        let joined = self.lines.join(" | ");
        let mut t: String = joined.chars().filter(|c| !c.is_control()).collect();
        if t.len() > 400 {
            let mut cut = 400;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
            t.push('…');
        }
        t
    }
}

/// Reads CRLF- (or LF-) terminated lines with a length bound, over any byte stream.
/// Keeps its own buffer so the stream beneath can be swapped (AUTH TLS, CCC) when the
/// buffer is empty.
#[derive(Default)]
pub struct LineReader {
    buf: Vec<u8>,
    start: usize,
}

impl LineReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when no bytes are buffered beyond the lines already returned.
    pub fn is_empty(&self) -> bool {
        self.start >= self.buf.len()
    }

    /// Reads one line (without its line ending). EOF before any byte → `Closed`.
    pub fn read_line<R: Read>(&mut self, stream: &mut R) -> Result<String> {
        loop {
            if let Some(pos) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let end = self.start + pos;
                let mut line = &self.buf[self.start..end];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                if line.len() > MAX_LINE_LEN {
                    return Err(FtpError::Protocol("reply line too long".into()));
                }
                let text = String::from_utf8_lossy(line).into_owned();
                self.start = end + 1;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(text);
            }
            if self.buf.len() - self.start > MAX_LINE_LEN + 1 {
                return Err(FtpError::Protocol("reply line too long".into()));
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = [0u8; 4096];
            let n = match stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FtpError::io("reading server reply", e)),
            };
            if n == 0 {
                return Err(FtpError::Closed(
                    "server closed the control connection".into(),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one complete (possibly multi-line) reply.
    pub fn read_reply<R: Read>(&mut self, stream: &mut R) -> Result<Reply> {
        let first = self.read_line(stream)?;
        let (code, sep, rest) = split_code(&first).ok_or_else(|| {
            FtpError::Protocol(format!("malformed reply line {:?}", clip(&first)))
        })?;
        let mut lines = vec![rest.to_string()];
        let mut bytes = first.len();
        if sep == b'-' {
            loop {
                if lines.len() >= MAX_REPLY_LINES || bytes > MAX_REPLY_BYTES {
                    return Err(FtpError::Protocol("multi-line reply too long".into()));
                }
                let line = self.read_line(stream)?;
                bytes += line.len();
                match split_code(&line) {
                    Some((c, b' ', rest)) if c == code => {
                        lines.push(rest.to_string());
                        break;
                    }
                    _ => lines.push(line),
                }
            }
        }
        Ok(Reply { code, lines })
    }
}

/// Splits `xyz-text` / `xyz text` / `xyz` into (code, separator, text).
fn split_code(line: &str) -> Option<(u16, u8, &str)> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'1'..=b'5').contains(&b[0]) {
        return None;
    }
    let code = line[..3].parse().ok()?;
    match b.get(3) {
        None => Some((code, b' ', "")),
        Some(b' ') => Some((code, b' ', &line[4..])),
        Some(b'-') => Some((code, b'-', &line[4..])),
        Some(_) => None,
    }
}

/// A short, printable excerpt of untrusted text for error messages.
pub fn clip(s: &str) -> String {
    s.chars().take(120).filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Result<Reply> {
        LineReader::new().read_reply(&mut input.as_bytes())
    }

    #[test]
    fn single_and_multiline() {
        let r = parse("220 Welcome\r\n").unwrap();
        assert_eq!(
            (r.code, r.lines.clone()),
            (220, vec!["Welcome".to_string()])
        );
        let r =
            parse("211-Features:\r\n MLST size*;\r\n UTF8\r\n211-not end\r\n211 End\r\n").unwrap();
        assert_eq!(r.code, 211);
        assert_eq!(
            r.lines,
            vec!["Features:", " MLST size*;", " UTF8", "211-not end", "End"]
        );
        let r = parse("200\n").unwrap();
        assert_eq!(r.code, 200);
    }

    #[test]
    fn consecutive_replies_share_the_buffer() {
        let mut rd = LineReader::new();
        let mut input: &[u8] = b"150 Opening\r\n226 Done\r\n";
        assert_eq!(rd.read_reply(&mut input).unwrap().code, 150);
        assert_eq!(rd.read_reply(&mut input).unwrap().code, 226);
        assert!(rd.is_empty());
    }

    #[test]
    fn hostile_replies_are_refused() {
        assert!(matches!(parse("hello\r\n"), Err(FtpError::Protocol(_))));
        assert!(matches!(parse("999 x\r\n"), Err(FtpError::Protocol(_))));
        assert!(matches!(parse("22 x\r\n"), Err(FtpError::Protocol(_))));
        assert!(matches!(parse("220x\r\n"), Err(FtpError::Protocol(_))));
        let long = format!("220 {}\r\n", "a".repeat(MAX_LINE_LEN + 10));
        assert!(matches!(parse(&long), Err(FtpError::Protocol(_))));
        let endless = format!("220 {}", "a".repeat(100_000));
        assert!(matches!(parse(&endless), Err(FtpError::Protocol(_))));
        let many: String = std::iter::once("211-x\r\n".to_string())
            .chain((0..MAX_REPLY_LINES + 5).map(|_| " l\r\n".to_string()))
            .collect();
        assert!(matches!(parse(&many), Err(FtpError::Protocol(_))));
        assert!(matches!(parse("211-x\r\n more"), Err(FtpError::Closed(_))));
        assert!(matches!(parse(""), Err(FtpError::Closed(_))));
    }

    #[test]
    fn text_is_clipped_and_cleaned() {
        let r = Reply {
            code: 550,
            lines: vec![format!("a\u{1b}b{}", "x".repeat(1000))],
        };
        let t = r.text();
        assert!(t.starts_with("ab"));
        assert!(t.len() < 420);
    }
}
