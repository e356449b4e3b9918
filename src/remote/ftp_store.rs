//! `RemoteStore` over a [`Pool`] of FTPS connections. FTP replies become the
//! filesystem's `StoreError`s here, in one place ([`to_store`]).

use super::pool::{Pool, Use};
use crate::error::{FtpError, Result};
use crate::fs::error::{Refusal, StoreError, StoreResult};
use crate::fs::store::RemoteStore;
use crate::ftp::reply::code;
use crate::ftp::{FtpConnection, RemoteEntry};
use std::cell::Cell;
use std::io::BufRead;
use std::sync::Arc;
use std::time::SystemTime;

/// Size of the buffer each transfer reads and writes with.
const IO_BUF: usize = 256 * 1024;

pub struct FtpStore {
    pool: Arc<Pool>,
}

impl FtpStore {
    pub fn new(pool: Arc<Pool>) -> Self {
        FtpStore { pool }
    }
}

impl FtpStore {
    /// A command that changes the server, through the pool's retry policy. When a
    /// lost connection made the pool repeat it, the server may have carried out
    /// the first one: a repeat refused with `done_errno` (DELE: no such file, MKD:
    /// exists) means it did, and is a success.
    fn repeatable(
        &self,
        mut op: impl FnMut(&mut FtpConnection) -> Result<()>,
        done_errno: i32,
    ) -> Result<()> {
        let mut attempts = 0;
        self.pool.run(Use::Command, |c| {
            attempts += 1;
            match op(c) {
                Err(e) if attempts > 1 && e.reply_code().is_some() && e.errno() == done_errno => {
                    log::debug!("repeated command refused as already done ({e}): success");
                    Ok(())
                }
                other => other,
            }
        })
    }
}

impl FtpStore {
    // ---- the operations, in FTP terms (see `RemoteStore` for each) ----

    fn ftp_check_name(&self, name: &str) -> Result<()> {
        match self.pool.encoding().encode(name) {
            Ok(_) => Ok(()),
            Err(c) => Err(FtpError::Unencodable(format!(
                "{c:?} in {name:?} cannot be sent to this server (encoding=, or byte 0xFF)"
            ))),
        }
    }

    fn ftp_list(&self, dir: &str) -> Result<Vec<RemoteEntry>> {
        self.pool.run(Use::Transfer, |c| c.list_dir(dir))
    }

    fn ftp_list_each(&self, dir: &str, sink: &mut dyn FnMut(RemoteEntry)) -> Result<()> {
        let delivered = Cell::new(false);
        self.pool.run_until_delivered(
            Use::Transfer,
            || delivered.get(),
            |c| {
                c.list_dir_each(dir, &mut |e| {
                    delivered.set(true);
                    sink(e)
                })
            },
        )
    }

    fn ftp_read_from(
        &self,
        path: &str,
        offset: u64,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let delivered = Cell::new(false);
        self.pool.run_until_delivered(
            Use::Transfer,
            || delivered.get(),
            |c| {
                let mut dl = c.retr(path, offset)?;
                let mut buf = vec![0u8; IO_BUF];
                loop {
                    // An error has ended the transfer, with the server's reason if any.
                    let n = dl.read_chunk(&mut buf)?;
                    if n == 0 {
                        return dl.finish().map(drop);
                    }
                    delivered.set(true);
                    if !sink(&buf[..n]) {
                        return dl.abort();
                    }
                }
            },
        )
    }

    fn ftp_write_file(&self, path: &str, data: &mut dyn BufRead) -> Result<u64> {
        // Until a byte of `data` is consumed, a dead idle connection is replaced
        // as in every other operation.
        loop {
            let mut c = self.pool.get(Use::Transfer)?;
            let mut consumed = false;
            match upload_on(&mut c, path, data, &mut consumed) {
                Err(e) if !consumed && c.reused && (c.is_broken() || e.is_connection_lost()) => {
                    log::debug!("retrying STOR {path} on another connection after: {e}");
                    c.mark_broken();
                }
                other => return other,
            }
        }
    }

    fn ftp_size(&self, path: &str) -> Result<u64> {
        self.pool.run(Use::Command, |c| {
            c.binary()?;
            c.size(path)
        })
    }

    /// Continues an interrupted upload at `offset`: `REST offset` + `STOR` where
    /// the server announces REST STREAM (bytes the old transfer may still be
    /// writing are the same bytes at the same offsets), else `APPE` once SIZE says
    /// the file holds exactly `offset` bytes (asked twice, a moment apart, so that
    /// a server still finishing the cut transfer is not appended to mid-write).
    /// Not repeated on another connection once a byte went out.
    fn ftp_resume_file(
        &self,
        path: &str,
        offset: u64,
        data: &mut dyn BufRead,
        append: bool,
    ) -> Result<u64> {
        let mut c = self.pool.get(Use::Transfer)?;
        let mut consumed = false;
        if c.features().rest_stream {
            let refused = match c.stor_from(path, offset) {
                Ok(up) => return send_upload(up, data, &mut consumed),
                Err(e) => e,
            };
            // REST STREAM announced, but not for uploads (proftpd without
            // AllowStoreRestart: "451 ... Restart not permitted"): APPE instead,
            // where that is safe (below).
            if !(append && !c.is_broken() && matches!(refused, FtpError::Reply { .. })) {
                return Err(refused);
            }
            log::info!("{path}: the server refuses to restart an upload ({refused}); appending");
        }
        if !append {
            // Not repeatable: the error must not be taken for a lost connection.
            return Err(FtpError::not_offered(
                &format!("APPE {path}"),
                "not sent: no REST STREAM, and a cut APPE transfer may still append \
                 late bytes (a second APPE could duplicate them)",
            ));
        }
        c.binary()?;
        let first = c.size(path)?;
        std::thread::sleep(std::time::Duration::from_millis(200));
        let second = c.size(path)?;
        if first != offset || second != offset {
            return Err(FtpError::Protocol(format!(
                "cannot resume {path}: the server holds {second} bytes, not {offset}, and has no REST STREAM"
            )));
        }
        let up = c.stor(path, true)?;
        send_upload(up, data, &mut consumed)
    }

    fn ftp_delete(&self, path: &str) -> Result<()> {
        self.repeatable(|c| c.delete(path), libc::ENOENT)
    }

    fn ftp_mkdir(&self, path: &str) -> Result<()> {
        self.repeatable(|c| c.mkdir(path), libc::EEXIST)
    }

    fn ftp_rmdir(&self, path: &str) -> Result<()> {
        self.repeatable(|c| c.rmdir(path), libc::ENOENT)
    }

    fn ftp_rename(&self, from: &str, to: &str) -> Result<()> {
        // Repeated after a lost connection, "no such file" for the source means
        // the first RNFR/RNTO went through.
        self.repeatable(|c| c.rename(from, to), libc::ENOENT)
    }

    fn ftp_chmod(&self, path: &str, mode: u32) -> Result<()> {
        self.pool.run(Use::Command, |c| c.chmod(path, mode))
    }

    fn ftp_set_mtime(&self, path: &str, mtime: SystemTime) -> Result<()> {
        self.pool.run(Use::Command, |c| c.set_mtime(path, mtime))
    }
}

impl RemoteStore for FtpStore {
    fn check_name(&self, name: &str) -> StoreResult<()> {
        self.ftp_check_name(name).map_err(to_store)
    }

    fn list(&self, dir: &str) -> StoreResult<Vec<RemoteEntry>> {
        self.ftp_list(dir).map_err(to_store)
    }

    fn list_each(&self, dir: &str, sink: &mut dyn FnMut(RemoteEntry)) -> StoreResult<()> {
        self.ftp_list_each(dir, sink).map_err(to_store)
    }

    fn read_from(
        &self,
        path: &str,
        offset: u64,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> StoreResult<()> {
        self.ftp_read_from(path, offset, sink).map_err(to_store)
    }

    fn write_file(&self, path: &str, data: &mut dyn BufRead) -> StoreResult<u64> {
        self.ftp_write_file(path, data).map_err(to_store)
    }

    fn size(&self, path: &str) -> StoreResult<u64> {
        self.ftp_size(path).map_err(to_store)
    }

    fn resume_file(
        &self,
        path: &str,
        offset: u64,
        data: &mut dyn BufRead,
        append: bool,
    ) -> StoreResult<u64> {
        self.ftp_resume_file(path, offset, data, append)
            .map_err(to_store)
    }

    fn delete(&self, path: &str) -> StoreResult<()> {
        self.ftp_delete(path).map_err(to_store)
    }

    fn mkdir(&self, path: &str) -> StoreResult<()> {
        self.ftp_mkdir(path).map_err(to_store)
    }

    fn rmdir(&self, path: &str) -> StoreResult<()> {
        self.ftp_rmdir(path).map_err(to_store)
    }

    fn rename(&self, from: &str, to: &str) -> StoreResult<()> {
        self.ftp_rename(from, to).map_err(to_store)
    }

    fn chmod(&self, path: &str, mode: u32) -> StoreResult<()> {
        self.ftp_chmod(path, mode).map_err(to_store)
    }

    fn set_mtime(&self, path: &str, mtime: SystemTime) -> StoreResult<()> {
        self.ftp_set_mtime(path, mtime).map_err(to_store)
    }

    fn is_contended(&self) -> bool {
        self.pool.is_contended()
    }
}

/// An FTP client error in the filesystem's terms: what the server refused and
/// why (from the reply code and its text), or a lost connection / "try again"
/// (421, 425, 426, 450, 451) that may be repeated or resumed.
pub fn to_store(e: FtpError) -> StoreError {
    let message = e.to_string();
    match &e {
        FtpError::Reply {
            code:
                code::SERVICE_CLOSING
                | code::CANT_OPEN_DATA
                | code::TRANSFER_ABORTED
                | code::FILE_BUSY
                | code::LOCAL_ERROR,
            ..
        } => StoreError::Lost(message),
        // "550 File name too long", "500 Input line too long".
        FtpError::Reply { .. } if e.errno() == libc::ENAMETOOLONG => {
            StoreError::NameTooLong(message)
        }
        FtpError::Reply { .. } if e.is_not_implemented() => {
            StoreError::refused(Refusal::NotImplemented, message)
        }
        FtpError::Reply { .. } => {
            let why = match e.errno() {
                libc::ENOENT => Refusal::NotFound,
                libc::EEXIST => Refusal::Exists,
                libc::ENOTEMPTY => Refusal::NotEmpty,
                libc::ENOTDIR => Refusal::NotDir,
                libc::EISDIR => Refusal::IsDir,
                libc::EACCES | libc::EPERM => Refusal::Denied,
                libc::ENOSPC | libc::EDQUOT => Refusal::NoSpace,
                libc::ENOTSUP => Refusal::NotImplemented,
                _ => Refusal::Other,
            };
            StoreError::refused(why, message)
        }
        FtpError::Timeout(_) => StoreError::Timeout(message),
        FtpError::Io { .. }
        | FtpError::Closed(_)
        | FtpError::Protocol(_)
        | FtpError::Truncated(_) => StoreError::Lost(message),
        FtpError::Tls(_) => StoreError::Failed(message),
        FtpError::Invalid(_) => StoreError::Invalid(message),
        FtpError::Unencodable(_) => StoreError::Unencodable(message),
        FtpError::NameTooLong(_) => StoreError::NameTooLong(message),
    }
}

/// One upload of `data` as `path` on `c`; `consumed` turns true with the first
/// byte taken from `data` (the upload can no longer be repeated).
fn upload_on(
    c: &mut FtpConnection,
    path: &str,
    data: &mut dyn BufRead,
    consumed: &mut bool,
) -> Result<u64> {
    let up = c.stor(path, false)?;
    send_upload(up, data, consumed)
}

/// Sends `data` through a started upload, then ends it (close_notify, 226).
fn send_upload(
    mut up: crate::ftp::Upload<'_>,
    data: &mut dyn BufRead,
    consumed: &mut bool,
) -> Result<u64> {
    loop {
        let chunk = data
            .fill_buf()
            .map_err(|e| FtpError::io("reading the data to upload", e))?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        *consumed = true;
        let sent = up.send(chunk);
        data.consume(n);
        sent?;
    }
    up.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> FtpError {
        FtpError::Reply {
            command: "X".into(),
            code,
            text: text.into(),
        }
    }

    #[test]
    fn replies_become_store_errors_with_the_right_errno() {
        let cases = [
            (reply(550, "x: No such file or directory"), libc::ENOENT),
            (reply(550, "x: Permission denied"), libc::EACCES),
            (reply(550, "File name too long."), libc::ENAMETOOLONG),
            (reply(500, "Input line too long."), libc::ENAMETOOLONG),
            (reply(502, "Command not implemented"), libc::ENOTSUP),
            (reply(426, "Transfer aborted"), libc::EIO),
            (reply(552, "Quota exceeded"), libc::ENOSPC),
            (FtpError::Timeout("stall".into()), libc::ETIMEDOUT),
            (FtpError::NameTooLong("deep".into()), libc::ENAMETOOLONG),
        ];
        for (e, errno) in cases {
            let text = e.to_string();
            assert_eq!(to_store(e).errno(), errno, "{text}");
        }
        assert!(to_store(reply(426, "x")).is_resumable());
        assert!(to_store(reply(502, "x")).is_not_implemented());
    }
}
