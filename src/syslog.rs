//! Log output for a detached mount: once ftpsfs has left the terminal, log lines go
//! to syslog (the journal), so that failed uploads and kept spool files stay visible.

use std::io::{self, Write};

/// A `Write` that sends each line to syslog(3), facility daemon, tag "ftpsfs".
pub struct SyslogWriter {
    line: Vec<u8>,
}

impl SyslogWriter {
    pub fn open() -> Self {
        // SAFETY: a static NUL-terminated identifier, as openlog(3) keeps the pointer.
        unsafe { libc::openlog(c"ftpsfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        SyslogWriter { line: Vec::new() }
    }

    fn emit(&mut self) {
        let text: Vec<u8> = self.line.drain(..).filter(|&b| b != 0).collect();
        let text = String::from_utf8_lossy(&text);
        let level = if text.contains(" ERROR ") {
            libc::LOG_ERR
        } else if text.contains(" WARN ") {
            libc::LOG_WARNING
        } else {
            libc::LOG_INFO
        };
        if let Ok(c) = std::ffi::CString::new(text.trim_end().as_bytes()) {
            // SAFETY: "%s" with one valid C string argument.
            unsafe { libc::syslog(level, c"%s".as_ptr(), c.as_ptr()) };
        }
    }
}

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.line.is_empty() {
            self.emit();
        }
        Ok(())
    }
}
