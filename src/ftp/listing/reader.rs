//! Reading a whole listing from its data connection: line by line, each line
//! bounded in length, the listing bounded in lines and bytes (a hostile server may
//! send an endless one), names decoded from the server's charset (`encoding=`),
//! then parsed as MLSD facts or LIST output.
//!
//! Design. This works on any `BufRead`, so it is tested on bytes; the session
//! hands it the download. An overlong line is skipped a bounded piece at a time
//! (the byte bound stops one that never ends); lines that do not parse are logged
//! and skipped; entries go to the caller as soon as they are parsed.

use super::{list, mlsd};
use crate::ftp::entry::RemoteEntry;
use crate::ftp::reply::clip;
use crate::names::NameCodec;
use std::io::{self, BufRead, Read};
use std::time::SystemTime;

/// How the listing is written.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// MLSD facts (RFC 3659).
    Mlsd,
    /// LIST output (`ls -l` or DOS style); `now` dates the "Mon DD HH:MM" lines.
    List { now: SystemTime },
}

/// The most a listing may hold before reading stops.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_entries: usize,
    pub max_bytes: u64,
}

/// Why a listing could not be read to its end.
#[derive(Debug)]
pub enum ReadError {
    /// More lines or bytes than the bounds allow.
    TooLong,
    /// The data connection failed.
    Read(io::Error),
}

/// Reads `rd` to its end, handing each parsed entry to `entry`.
pub fn read_listing(
    rd: &mut dyn BufRead,
    format: Format,
    bounds: Bounds,
    encoding: NameCodec,
    entry: &mut dyn FnMut(RemoteEntry),
) -> Result<(), ReadError> {
    let (mut lines, mut bytes) = (0usize, 0u64);
    let mut line = Vec::with_capacity(256);
    loop {
        if lines > bounds.max_entries || bytes > bounds.max_bytes {
            return Err(ReadError::TooLong);
        }
        line.clear();
        let n = (&mut *rd)
            .take(mlsd::MAX_LINE_LEN as u64 + 2)
            .read_until(b'\n', &mut line)
            .map_err(ReadError::Read)?;
        if n == 0 {
            return Ok(());
        }
        bytes += n as u64;
        lines += 1;
        if line.last() != Some(&b'\n') && n > mlsd::MAX_LINE_LEN {
            log::warn!("skipping an overlong listing line");
            // Skip the rest of that line, a bounded piece at a time (the
            // listing's byte bound stops a line that never ends).
            let mut rest = Vec::new();
            let skipped = (&mut *rd)
                .take(1 << 20)
                .read_until(b'\n', &mut rest)
                .map_err(ReadError::Read)?;
            bytes += skipped as u64;
            if rest.last() != Some(&b'\n') {
                lines -= 1; // the same line goes on
            }
            continue;
        }
        let text = encoding.decode(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            continue;
        }
        let parsed = match format {
            Format::Mlsd => match mlsd::parse_mlsd_line(text) {
                Ok(e) => e,
                Err(err) => {
                    log::warn!("skipping listing line {:?}: {err}", clip(text));
                    None
                }
            },
            Format::List { now } => list::parse_list_line(text, now),
        };
        if let Some(e) = parsed {
            entry(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: Bounds = Bounds {
        max_entries: 1000,
        max_bytes: 1 << 20,
    };

    fn read(bytes: &[u8], format: Format, bounds: Bounds) -> (Vec<String>, Result<(), ReadError>) {
        let mut names = Vec::new();
        let mut rd = io::BufReader::new(bytes);
        let r = read_listing(&mut rd, format, bounds, NameCodec::default(), &mut |e| {
            names.push(e.name)
        });
        (names, r)
    }

    #[test]
    fn mlsd_lines_become_entries_and_bad_lines_are_skipped() {
        let text = b"type=file;size=3;modify=20200101000000; a b.txt\r\n\
                     garbage without facts\r\n\
                     \r\n\
                     type=dir;modify=20200101000000; sub\n\
                     type=cdir; .\r\n\
                     type=file;size=1; last";
        let (names, r) = read(text, Format::Mlsd, BIG);
        assert!(r.is_ok());
        assert_eq!(names, ["a b.txt", "sub", "last"]);
    }

    #[test]
    fn list_lines_become_entries() {
        let text = b"drwxr-xr-x 2 u g 4096 Jan  1  2020 d\r\n\
                     -rw-r--r-- 1 u g 12 Jan  1  2020 f.txt\r\n\
                     total 8\r\n";
        let now = SystemTime::now();
        let (names, r) = read(text, Format::List { now }, BIG);
        assert!(r.is_ok());
        assert_eq!(names, ["d", "f.txt"]);
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_one_read() {
        let mut text = b"type=file;size=1; ".to_vec();
        text.extend(std::iter::repeat_n(b'x', mlsd::MAX_LINE_LEN * 3));
        text.extend_from_slice(b"\r\ntype=file;size=1; after\r\n");
        let (names, r) = read(&text, Format::Mlsd, BIG);
        assert!(r.is_ok());
        assert_eq!(names, ["after"]);
    }

    #[test]
    fn endless_listings_stop_at_the_bounds() {
        let many: Vec<u8> = (0..50)
            .flat_map(|i| format!("type=file;size=1; f{i}\r\n").into_bytes())
            .collect();
        let few = Bounds {
            max_entries: 10,
            max_bytes: 1 << 20,
        };
        let (names, r) = read(&many, Format::Mlsd, few);
        assert!(matches!(r, Err(ReadError::TooLong)));
        assert!(names.len() <= 11, "{} entries", names.len());
        // A line that never ends is stopped by the byte bound.
        let endless = vec![b'x'; 4 << 20];
        let small = Bounds {
            max_entries: 10,
            max_bytes: 1 << 20,
        };
        let (_, r) = read(&endless, Format::Mlsd, small);
        assert!(matches!(r, Err(ReadError::TooLong)));
    }

    #[test]
    fn read_errors_are_returned() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::ConnectionReset))
            }
        }
        let mut rd = io::BufReader::new(Failing);
        let r = read_listing(
            &mut rd,
            Format::Mlsd,
            BIG,
            NameCodec::default(),
            &mut |_| {},
        );
        assert!(matches!(r, Err(ReadError::Read(e)) if e.kind() == io::ErrorKind::ConnectionReset));
    }
}
