//! File names as bytes, carried in Rust strings.
//!
//! Linux names are bytes and FTP servers send whatever bytes their disks hold
//! (Latin-1 names are common on older data). Inside ftpsfs a name is a `String`
//! so that paths can be joined, compared and logged; a byte that is not part of
//! valid UTF-8 is carried as one character of a private range
//! (U+10FF80..=U+10FFFF: byte 0x80 + n is U+10FF80 + n, plane 16's private use
//! area, which no real name uses). The same rule applies on both sides:
//! names from the kernel ([`from_os`]) and from the server ([`NameCodec::decode`]),
//! so a name goes from the server to a program and back byte for byte, and a
//! program can create any name the server accepts. The mapping is a bijection:
//! valid UTF-8 that already contains one of those private characters has its
//! bytes escaped one by one, so [`to_bytes`] always restores the exact input.
//!
//! For servers that do not speak UTF-8, `-o encoding=NAME` converts names both
//! ways ([`NameCodec::Charset`]; `latin1` is ISO-8859-1 exactly, other labels go
//! to `encoding_rs`); a local name the server's charset cannot express is
//! refused (`EILSEQ`) rather than sent mangled.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// First character of the range that carries raw bytes 0x80..=0xFF.
const ESCAPE_BASE: u32 = 0x10_FF80;

/// The character carrying byte `b` (0x80..=0xFF).
fn escape(b: u8) -> char {
    char::from_u32(ESCAPE_BASE + (u32::from(b) & 0x7F)).unwrap_or(char::REPLACEMENT_CHARACTER)
}

fn is_escape(c: char) -> bool {
    (ESCAPE_BASE..=0x10_FFFF).contains(&u32::from(c))
}

/// The name of `bytes` (see the module header); borrowed when it is plain UTF-8.
pub fn from_bytes(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(is_escape) => Cow::Borrowed(s),
        _ => Cow::Owned(escape_all(bytes)),
    }
}

fn escape_all(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    while !bytes.is_empty() {
        let (valid, rest) = match std::str::from_utf8(bytes) {
            Ok(s) => (s, &[][..]),
            Err(e) => {
                let (v, r) = bytes.split_at(e.valid_up_to());
                // Valid by construction.
                (std::str::from_utf8(v).unwrap_or_default(), r)
            }
        };
        for c in valid.chars() {
            if is_escape(c) {
                let mut buf = [0u8; 4];
                c.encode_utf8(&mut buf)
                    .bytes()
                    .for_each(|b| out.push(escape(b)));
            } else {
                out.push(c);
            }
        }
        if let Some((&bad, after)) = rest.split_first() {
            // Bytes below 0x80 are always valid UTF-8: `bad` is 0x80 or above.
            out.push(escape(bad));
            bytes = after;
        } else {
            bytes = rest;
        }
    }
    out
}

/// The bytes a name stands for (the inverse of [`from_bytes`]).
pub fn to_bytes(name: &str) -> Cow<'_, [u8]> {
    if !name.chars().any(is_escape) {
        return Cow::Borrowed(name.as_bytes());
    }
    let mut out = Vec::with_capacity(name.len());
    for c in name.chars() {
        if is_escape(c) {
            out.push((u32::from(c) - ESCAPE_BASE) as u8 + 0x80);
        } else {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    Cow::Owned(out)
}

/// A name from the kernel.
pub fn from_os(name: &OsStr) -> Cow<'_, str> {
    from_bytes(name.as_bytes())
}

/// A name for the kernel.
pub fn to_os(name: &str) -> Cow<'_, OsStr> {
    match to_bytes(name) {
        Cow::Borrowed(b) => Cow::Borrowed(OsStr::from_bytes(b)),
        Cow::Owned(v) => Cow::Owned(OsString::from_vec(v)),
    }
}

/// True when the name is plain UTF-8 (no byte had to be carried as itself).
pub fn is_utf8(name: &str) -> bool {
    !name.chars().any(is_escape)
}

/// How long the name is in bytes, as the kernel sees it (NAME_MAX applies).
pub fn byte_len(name: &str) -> usize {
    name.chars()
        .map(|c| if is_escape(c) { 1 } else { c.len_utf8() })
        .sum()
}

/// How names are written on the wire (command lines, listings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NameCodec {
    /// UTF-8, other bytes passed through as they are (the default).
    #[default]
    Bytes,
    /// ISO-8859-1: each byte is the character of the same number.
    Latin1,
    /// Another charset (`encoding=`), converted with `encoding_rs`.
    Charset(&'static encoding_rs::Encoding),
}

impl NameCodec {
    /// The codec for an `encoding=` label (`utf-8`, `latin1`, `windows-1252`,
    /// `shift_jis`, …).
    pub fn for_label(label: &str) -> Option<NameCodec> {
        let l = label.trim().to_ascii_lowercase();
        match l.as_str() {
            "utf8" | "utf-8" => Some(NameCodec::Bytes),
            "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" | "l1" => Some(NameCodec::Latin1),
            _ => encoding_rs::Encoding::for_label(l.as_bytes()).map(|e| {
                if e == encoding_rs::UTF_8 {
                    NameCodec::Bytes
                } else {
                    NameCodec::Charset(e)
                }
            }),
        }
    }

    /// True when names are converted from a charset other than UTF-8.
    pub fn converts(&self) -> bool {
        *self != NameCodec::Bytes
    }

    /// A line from the server (a listing line) as text.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Cow<'a, str> {
        match self {
            NameCodec::Bytes => from_bytes(bytes),
            NameCodec::Latin1 => match std::str::from_utf8(bytes) {
                Ok(s) if bytes.is_ascii() => Cow::Borrowed(s),
                _ => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
            },
            NameCodec::Charset(e) => e.decode_without_bom_handling(bytes).0,
        }
    }

    /// A command line for the server; `Err` names the first character the
    /// server's charset cannot express. Byte 0xFF is refused too: on the control
    /// connection it is Telnet's IAC, which some servers (proftpd) interpret and
    /// others (vsftpd) take literally, so no form of it names the same file on
    /// every server.
    pub fn encode<'a>(&self, line: &'a str) -> Result<Cow<'a, [u8]>, char> {
        if line.is_ascii() {
            return Ok(Cow::Borrowed(line.as_bytes()));
        }
        let bytes = self.encode_any(line)?;
        if let Some(i) = bytes.iter().position(|&b| b == 0xFF) {
            let before = self.decode(&bytes[..i]).chars().count();
            return Err(line.chars().nth(before).unwrap_or('\u{FF}'));
        }
        Ok(bytes)
    }

    fn encode_any<'a>(&self, line: &'a str) -> Result<Cow<'a, [u8]>, char> {
        match self {
            NameCodec::Bytes => Ok(to_bytes(line)),
            NameCodec::Latin1 => line
                .chars()
                .map(|c| match u32::from(c) {
                    n if n <= 0xFF => Ok(n as u8),
                    _ if is_escape(c) => Ok((u32::from(c) - ESCAPE_BASE) as u8 + 0x80),
                    _ => Err(c),
                })
                .collect::<Result<Vec<u8>, char>>()
                .map(Cow::Owned),
            NameCodec::Charset(e) => {
                let mut out = Vec::with_capacity(line.len());
                for c in line.chars() {
                    if is_escape(c) {
                        out.push((u32::from(c) - ESCAPE_BASE) as u8 + 0x80);
                        continue;
                    }
                    let mut buf = [0u8; 4];
                    let (bytes, _, unmappable) = e.encode(c.encode_utf8(&mut buf));
                    if unmappable {
                        return Err(c);
                    }
                    out.extend_from_slice(&bytes);
                }
                Ok(Cow::Owned(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_utf8_is_borrowed_and_unchanged() {
        assert!(matches!(
            from_bytes("café ☕".as_bytes()),
            Cow::Borrowed("café ☕")
        ));
        assert!(matches!(to_bytes("café ☕"), Cow::Borrowed(_)));
    }

    #[test]
    fn latin1_bytes_survive_the_round_trip() {
        let raw = b"caf\xe9.txt";
        let name = from_bytes(raw);
        assert_eq!(name.chars().count(), 8);
        assert_eq!(byte_len(&name), raw.len());
        assert_eq!(&*to_bytes(&name), raw);
        assert_eq!(to_os(&name).as_bytes(), raw);
        assert_eq!(from_os(OsStr::from_bytes(raw)), name);
    }

    #[test]
    fn names_with_the_private_characters_themselves_round_trip() {
        let tricky = "a\u{10FF80}b\u{10FFFF}";
        let name = from_bytes(tricky.as_bytes());
        assert_ne!(name, tricky, "escaped byte by byte");
        assert_eq!(&*to_bytes(&name), tricky.as_bytes());
    }

    #[test]
    fn charsets_convert_both_ways() {
        let l1 = NameCodec::for_label("latin1").expect("latin1");
        assert_eq!(l1.decode(b"caf\xe9.txt"), "café.txt");
        assert_eq!(
            &*l1.encode("STOR /café.txt").expect("encode"),
            b"STOR /caf\xe9.txt"
        );
        assert_eq!(l1.encode("RETR /☕"), Err('☕'));
        let sjis = NameCodec::for_label("shift_jis").expect("sjis");
        let bytes = sjis.encode("MKD /日本").expect("encode").into_owned();
        assert_ne!(bytes, "MKD /日本".as_bytes());
        assert_eq!(sjis.decode(&bytes), "MKD /日本");
        assert_eq!(NameCodec::for_label("UTF-8"), Some(NameCodec::Bytes));
        assert_eq!(NameCodec::for_label("no-such-charset"), None);
        // A raw byte from the kernel that is not in the charset goes as it is.
        let raw = from_bytes(b"x\xfe");
        assert_eq!(&*l1.encode(&raw).expect("encode"), b"x\xfe");
    }

    #[test]
    fn byte_ff_is_never_sent() {
        assert_eq!(
            NameCodec::Bytes.encode(&from_bytes(b"STOR /a\xff")),
            Err(escape(0xFF))
        );
        assert_eq!(NameCodec::Latin1.encode("STOR /ÿ"), Err('ÿ'));
        let cp1252 = NameCodec::for_label("windows-1252").expect("cp1252");
        assert_eq!(cp1252.encode("STOR /ÿ"), Err('ÿ'));
        assert!(cp1252.encode("STOR /€").is_ok());
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let name = from_bytes(&bytes);
            prop_assert_eq!(&*to_bytes(&name), &bytes[..]);
            prop_assert_eq!(byte_len(&name), bytes.len());
            if !bytes.contains(&0xFF) {
                prop_assert_eq!(&*NameCodec::Bytes.encode(&name).unwrap(), &bytes[..]);
            }
        }

        #[test]
        fn latin1_round_trips_every_byte(bytes in proptest::collection::vec(0u8..0xFF, 0..64)) {
            let l1 = NameCodec::Latin1;
            let text = l1.decode(&bytes);
            prop_assert_eq!(&*l1.encode(&text).unwrap(), &bytes[..]);
        }
    }
}
