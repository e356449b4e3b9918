//! The commands on one file or directory: SIZE, MDTM, MLST, DELE, MKD, RMD,
//! RNFR/RNTO, SITE CHMOD, the ways to set a time, NOOP and CWD.
//!
//! Design. Every path goes through `on_paths` (`longpath`), which names it in a
//! line short enough for the server. Commands that change the tree (DELE, MKD, RMD,
//! SITE CHMOD) carry an EPSV for the next transfer in the same write
//! (`expect_preparing`); RNFR and RNTO go together. Setting a time tries what the
//! server may offer (MFMT, SITE UTIME, vsftpd's two-argument MDTM) and remembers
//! what worked, or that nothing does.

use super::{FtpConnection, MtimeMethod};
use crate::error::{FtpError, Result};
use crate::ftp::command::{fixed_len, Command, Verb};
use crate::ftp::entry::RemoteEntry;
use crate::ftp::listing::{mlsd, timeconv};
use crate::ftp::reply::{clip, code, Reply};
use std::time::SystemTime;

impl FtpConnection {
    pub fn size(&mut self, path: &str) -> Result<u64> {
        self.on_paths(fixed_len(Command::size), &[path], |c, a| c.size_at(&a[0]))
    }

    pub(super) fn size_at(&mut self, arg: &str) -> Result<u64> {
        let r = self.expect(&Command::size(arg))?;
        r.text()
            .trim()
            .parse()
            .map_err(|_| FtpError::Protocol(format!("bad SIZE reply {:?}", clip(&r.text()))))
    }

    pub fn mdtm(&mut self, path: &str) -> Result<SystemTime> {
        self.on_paths(fixed_len(Command::mdtm), &[path], |c, a| {
            let r = c.expect(&Command::mdtm(&a[0]))?;
            timeconv::parse_mdtm_time(r.text().trim())
                .ok_or_else(|| FtpError::Protocol(format!("bad MDTM reply {:?}", clip(&r.text()))))
        })
    }

    /// MLST of one path (where the server has MLST).
    pub fn mlst(&mut self, path: &str) -> Result<Option<RemoteEntry>> {
        // "Not found" goes through `on_paths` as the refusal it is (to be asked
        // again from a fresh directory), and comes back as `None`.
        let r = self.on_paths(fixed_len(Command::mlst), &[path], |c, a| c.mlst_at(&a[0]));
        match r {
            Err(e) if e.reply_code() == Some(code::FILE_UNAVAILABLE) => Ok(None),
            other => other.map(Some),
        }
    }

    fn mlst_at(&mut self, arg: &str) -> Result<RemoteEntry> {
        let r = self.expect(&Command::mlst(arg))?;
        for line in r.lines.iter().skip(1) {
            if line.starts_with(' ') {
                return mlsd::parse_mlst_reply_line(line)
                    .map_err(|e| FtpError::Protocol(format!("bad MLST reply: {e}")));
            }
        }
        Err(FtpError::Protocol("MLST reply without facts".into()))
    }

    pub fn delete(&mut self, path: &str) -> Result<()> {
        self.on_paths(fixed_len(Command::dele), &[path], |c, a| {
            c.expect_preparing(Command::dele(&a[0]))
        })
    }

    pub fn mkdir(&mut self, path: &str) -> Result<()> {
        self.on_paths(fixed_len(Command::mkd), &[path], |c, a| {
            c.expect_preparing(Command::mkd(&a[0]))
        })
    }

    pub fn rmdir(&mut self, path: &str) -> Result<()> {
        self.on_paths(fixed_len(Command::rmd), &[path], |c, a| {
            c.expect_preparing(Command::rmd(&a[0]))
        })
    }

    /// RNFR and RNTO sent together (one round trip); if RNFR is refused, the
    /// server answers RNTO with 503 and RNFR's error is returned.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let fixed = fixed_len(Command::rnfr).max(fixed_len(Command::rnto));
        self.on_paths(fixed, &[from, to], |c, a| c.rename_at(&a[0], &a[1]))
    }

    fn rename_at(&mut self, from: &str, to: &str) -> Result<()> {
        let (rnfr, rnto) = if self.pipelining() {
            let (mut r, unsure) = self.exchange(&[Command::rnfr(from), Command::rnto(to)], true)?;
            let rnto = r.pop();
            match (r.pop(), rnto) {
                // A refusal whose place is uncertain: the rename did not happen,
                // so doing it again one command at a time is safe.
                (Some(_), Some(_)) if !unsure.is_empty() => self.rename_unpipelined(from, to)?,
                (Some(a), Some(b)) => (a, b),
                _ => return Err(FtpError::Protocol("missing reply to RNFR/RNTO".into())),
            }
        } else {
            self.rename_unpipelined(from, to)?
        };
        Verb::Rnfr.accept(rnfr)?;
        Verb::Rnto.accept(rnto).map(drop)
    }

    /// RNFR, and RNTO only after its 350 (servers that reorder replies). A refused
    /// RNFR comes back with a made-up 503 for RNTO, which was not sent.
    fn rename_unpipelined(&mut self, from: &str, to: &str) -> Result<(Reply, Reply)> {
        let rnfr = self.command(&Command::rnfr(from))?;
        if !Verb::Rnfr.completes(rnfr.code) {
            let skipped = Reply {
                code: code::BAD_SEQUENCE,
                lines: vec!["RNTO not sent".into()],
            };
            return Ok((rnfr, skipped));
        }
        let rnto = self.command(&Command::rnto(to))?;
        Ok((rnfr, rnto))
    }

    pub fn chmod(&mut self, path: &str, mode: u32) -> Result<()> {
        let make = |p: &str| Command::site_chmod(mode, p);
        self.on_paths(fixed_len(make), &[path], |c, a| {
            c.expect_preparing(make(&a[0]))
        })
    }

    /// Sets the modification time with whatever the server offers: MFMT, then
    /// SITE UTIME, then vsftpd's two-argument MDTM. Remembers what worked.
    pub fn set_mtime(&mut self, path: &str, mtime: SystemTime) -> Result<()> {
        let t = timeconv::format_mfmt(mtime);
        let fixed = [
            MtimeMethod::Mfmt,
            MtimeMethod::SiteUtime,
            MtimeMethod::MdtmTwoArgs,
        ]
        .iter()
        .filter_map(|m| m.command(&t, ""))
        .map(|c| c.line().len())
        .max()
        .unwrap_or(0);
        self.on_paths(fixed, &[path], |c, a| c.set_mtime_at(&a[0], &t))
    }

    fn set_mtime_at(&mut self, path: &str, t: &str) -> Result<()> {
        let mut order = vec![];
        match self.mtime_method {
            Some(MtimeMethod::Unsupported) => {}
            Some(m) => order.push(m),
            None => {
                if self.features.mfmt {
                    order.push(MtimeMethod::Mfmt);
                }
                order.push(MtimeMethod::SiteUtime);
                order.push(MtimeMethod::MdtmTwoArgs);
            }
        }
        let mut last = None;
        // Only "not implemented" answers from every method prove there is no way;
        // a 550 may just mean "not for this path" (vsftpd refuses directories).
        let mut none_implemented = true;
        for m in order {
            let Some(cmd) = m.command(t, path) else {
                continue;
            };
            let r = self.command(&cmd)?;
            // Each way answers as MFMT does: 200, 213 or 250 by server.
            if Verb::Mfmt.completes(r.code) {
                self.mtime_method = Some(m);
                return Ok(());
            }
            let unimplemented = code::not_implemented(r.code) || r.code == code::BAD_ARGUMENTS;
            none_implemented &= unimplemented;
            let err = r.into_error(cmd.verb().name());
            if self.mtime_method.is_some() {
                return Err(err);
            }
            last = Some(err);
        }
        if self.mtime_method.is_none() && none_implemented {
            self.mtime_method = Some(MtimeMethod::Unsupported);
        }
        Err(last.unwrap_or_else(|| {
            FtpError::not_offered("MFMT", "the server offers no way to set modification times")
        }))
    }

    pub fn noop(&mut self) -> Result<()> {
        self.expect(&Command::noop()).map(drop)
    }

    /// TYPE I again (binary transfers and SIZE in bytes), as some servers forget
    /// it. A refusal is not an error: the login asked TYPE I already.
    pub fn binary(&mut self) -> Result<()> {
        self.command(&Command::type_image()).map(drop)
    }

    /// CWD into `dir` (absolute): a refusal is the server's reply as an error.
    /// Only for checking a directory before use: the connection's own commands
    /// name whole paths (`longpath` keeps track of where it is).
    pub fn enter(&mut self, dir: &str) -> Result<()> {
        super::check_path(dir)?;
        self.expect(&Command::cwd(dir)).map(drop)
    }
}

impl MtimeMethod {
    /// The command setting `path`'s time to `t` (MFMT form) this way.
    fn command(self, t: &str, path: &str) -> Option<Command> {
        match self {
            MtimeMethod::Mfmt => Some(Command::mfmt(t, path)),
            MtimeMethod::SiteUtime => Some(Command::site_utime(path, t)),
            MtimeMethod::MdtmTwoArgs => Some(Command::mdtm_set(t, path)),
            MtimeMethod::Unsupported => None,
        }
    }
}
