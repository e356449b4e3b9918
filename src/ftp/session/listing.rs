//! Directory listings over a data connection: MLSD where the server has it, else
//! `LIST -a` with exact times asked by MDTM afterwards.
//!
//! Design. The bytes are read and parsed by `ftp::listing::reader` (bounded in
//! lines and bytes); this module opens the transfer and ends it. A listing past
//! its bounds is abandoned without a word to the server (the connection is given
//! up): a server sending an endless listing would not stop for ABOR either.

use super::{FtpConnection, LISTING_BYTES_PER_ENTRY};
use crate::error::{FtpError, Result};
use crate::ftp::command::{fixed_len, Command, Verb};
use crate::ftp::entry::{EntryKind, RemoteEntry};
use crate::ftp::listing::reader::{self, Bounds, Format, ReadError};
use crate::ftp::listing::timeconv;
use std::io::BufReader;
use std::time::SystemTime;

impl FtpConnection {
    /// Lists a directory: MLSD where the server has it, else `LIST -a`. Lines that do
    /// not parse or carry unsafe names are skipped (and logged).
    pub fn list_dir(&mut self, path: &str) -> Result<Vec<RemoteEntry>> {
        let mut entries = Vec::new();
        self.list_dir_each(path, &mut |e| entries.push(e))?;
        Ok(entries)
    }

    /// [`FtpConnection::list_dir`] handing each entry to `sink` as soon as it is
    /// parsed (MLSD), so a caller can use the first entries while the rest are still
    /// on the wire. LIST entries come once the listing is complete, because their
    /// exact times are asked with MDTM afterwards. An error after some entries means
    /// the listing is incomplete.
    pub fn list_dir_each(&mut self, path: &str, sink: &mut dyn FnMut(RemoteEntry)) -> Result<()> {
        super::check_path(path)?;
        let use_mlsd = self.features.mlst;
        let make: fn(&str) -> Command = if use_mlsd {
            Command::mlsd
        } else {
            Command::list_all
        };
        self.renew_if_out_of_tickets()?;
        self.forget_cwd();
        let cmd = make(&self.dir_arg(fixed_len(make), path)?);
        let data = self.start_transfer(&cmd, 0)?;
        let format = if use_mlsd {
            Format::Mlsd
        } else {
            Format::List {
                now: SystemTime::now(),
            }
        };
        let max_entries = self.opts.max_listing_entries.max(1);
        let bounds = Bounds {
            max_entries,
            max_bytes: max_entries as u64 * LISTING_BYTES_PER_ENTRY,
        };
        let encoding = self.opts.encoding;
        let mut listed = Vec::new();
        let mut dl = super::Download::new(self, data, cmd.line().to_string());
        let mut rd = BufReader::with_capacity(65536, &mut dl);
        let read = reader::read_listing(&mut rd, format, bounds, encoding, &mut |e| {
            if use_mlsd {
                sink(e)
            } else {
                listed.push(e)
            }
        });
        drop(rd);
        match read {
            Ok(()) => {}
            Err(ReadError::TooLong) => {
                dl.abandon();
                log::error!(
                    "the listing of {path} is longer than {} entries or {} bytes: stopped \
                     (raise max_entries= if it is real)",
                    bounds.max_entries,
                    bounds.max_bytes
                );
                return Err(FtpError::Protocol(format!(
                    "the listing of {path} has more than {} entries (or {} bytes); stopped \
                     reading it (max_entries=)",
                    bounds.max_entries, bounds.max_bytes
                )));
            }
            // The download already read the server's final reply for its error.
            Err(ReadError::Read(e)) => {
                return Err(super::transfer::into_ftp_error(e, "reading listing"))
            }
        }
        dl.finish()?;
        if !use_mlsd && self.features.mdtm {
            self.exact_mtimes(path, &mut listed)?;
        }
        listed.into_iter().for_each(sink);
        Ok(())
    }

    /// LIST gives minutes at best (days for older files): ask MDTM for the exact
    /// time of every file, pipelined, so that the directory costs one more round
    /// trip, not one per file. Keeps the LIST time where MDTM fails.
    fn exact_mtimes(&mut self, dir: &str, entries: &mut [RemoteEntry]) -> Result<()> {
        const BATCH: usize = 64;
        let files: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].kind == EntryKind::File)
            .collect();
        for chunk in files.chunks(BATCH) {
            let mut batch = Vec::with_capacity(chunk.len());
            let mut asked = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let p = crate::ftp::entry::join(dir, &entries[i].name);
                // The listing changed into a long directory: names from there.
                if let Some(arg) = self.path_arg_here(fixed_len(Command::mdtm), &p) {
                    batch.push(Command::mdtm(&arg));
                    asked.push(i);
                }
            }
            // MDTM replies do not say whose time they are: a server known to reorder
            // replies gets them one at a time.
            let (replies, _) = self.exchange(&batch, false)?;
            for (&i, r) in asked.iter().zip(replies) {
                if Verb::Mdtm.completes(r.code) {
                    if let Some(t) = timeconv::parse_mdtm_time(r.text().trim()) {
                        entries[i].mtime = Some(t);
                    }
                }
            }
        }
        Ok(())
    }
}
