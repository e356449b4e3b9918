//! The user's interface: the site URL (`ftp://` explicit, `ftps://` implicit, as curl
//! and lftp use them), `-o name[=value],...` options as sshfs takes them, and where
//! the password comes from (never the command line).

use crate::error::{FtpError, Result};
use crate::ftp::tls::{parse_fingerprint, TlsConfig, TlsVersion};
use crate::ftp::{ConnectOptions, Protection, Secret};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A parsed site URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteUrl {
    pub implicit: bool,
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
    /// Remote directory shown as the mount's root, always starting with `/`.
    pub path: String,
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| FtpError::Invalid(format!("bad %-escape in {s:?}")))?;
            let v = u8::from_str_radix(hex, 16)
                .map_err(|_| FtpError::Invalid(format!("bad %-escape in {s:?}")))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| FtpError::Invalid(format!("{s:?} is not UTF-8")))
}

impl SiteUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| FtpError::Invalid(format!("bad URL {url:?}: {why}"));
        let (implicit, rest) = if let Some(r) = url.strip_prefix("ftp://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("ftps://") {
            (true, r)
        } else {
            return Err(bad(
                "it must start with ftp:// (explicit FTPS) or ftps:// (implicit FTPS)",
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (user, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let user = match user {
            Some(u) if u.contains(':') => {
                return Err(bad(
                    "a password in the URL would be visible to every user in `ps`; use password_file=, FTPSFS_PASSWORD, netrc or the prompt",
                ))
            }
            Some("") => return Err(bad("empty user name")),
            Some(u) => Some(percent_decode(u)?),
            None => None,
        };
        let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
            let end = r
                .find(']')
                .ok_or_else(|| bad("unclosed [ in IPv6 address"))?;
            let host = &r[..end];
            let port = match &r[end + 1..] {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (host.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => {
                if implicit {
                    990
                } else {
                    21
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        let mut path = percent_decode(path)?;
        if path.contains(['\r', '\n', '\0']) {
            return Err(bad("control characters in the path"));
        }
        while path.len() > 1 && path.ends_with('/') {
            path.pop();
        }
        Ok(SiteUrl {
            implicit,
            user,
            host,
            port,
            path,
        })
    }
}

/// `-o` options, in order; later ones win.
#[derive(Debug, Clone, Default)]
pub struct OptionList(Vec<(String, Option<String>)>);

impl OptionList {
    /// Parses every `-o` argument (`a,b=c,d`).
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Self {
        let mut v = Vec::new();
        for arg in args {
            for item in arg.as_ref().split(',').filter(|s| !s.is_empty()) {
                match item.split_once('=') {
                    Some((k, val)) => v.push((k.trim().to_string(), Some(val.to_string()))),
                    None => v.push((item.trim().to_string(), None)),
                }
            }
        }
        OptionList(v)
    }

    pub fn push(&mut self, name: &str, value: Option<&str>) {
        self.0.push((name.to_string(), value.map(str::to_string)));
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// A value that must be present when the option is.
    pub fn value(&self, name: &str) -> Result<Option<&str>> {
        if self.has(name) && self.get(name).is_none() {
            return Err(FtpError::Invalid(format!(
                "option {name} needs a value ({name}=...)"
            )));
        }
        Ok(self.get(name))
    }

    pub fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        match self.value(name)? {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| FtpError::Invalid(format!("bad value for {name}: {v:?}"))),
        }
    }
}

/// Everything needed to reach and log in to a site.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub url: SiteUrl,
    pub connect: ConnectOptions,
    pub tls: TlsConfig,
}

/// Reads a password (or passphrase) file. Like ssh with a private key, refuses one
/// that other users may read or change: the secret would not be one.
fn read_secret_file(path: &Path, what: &str) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(path)
        .map_err(|e| FtpError::Invalid(format!("cannot read {what} {}: {e}", path.display())))?;
    let md = f
        .metadata()
        .map_err(|e| FtpError::Invalid(format!("cannot read {what} {}: {e}", path.display())))?;
    if md.mode() & 0o077 != 0 {
        return Err(FtpError::Invalid(format!(
            "{what} {} is accessible by other users (mode {:03o}); make it private with: chmod 600 {}",
            path.display(),
            md.mode() & 0o777,
            path.display()
        )));
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut &f, &mut s)
        .map_err(|e| FtpError::Invalid(format!("cannot read {what} {}: {e}", path.display())))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

/// True when `path` exists and belongs to the real user (not the effective one: a
/// setuid mount keeps root's HOME and XDG variables).
pub fn owned_by_real_user(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    std::fs::metadata(path).is_ok_and(|m| m.uid() == uid)
}

/// The real user's home: `$HOME` when it is theirs, else their passwd entry's.
pub fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").map(PathBuf::from) {
        if owned_by_real_user(&h) {
            return Some(h);
        }
    }
    passwd_home()
}

fn passwd_home() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: getpwuid_r with a buffer of the given size and valid out-pointers;
    // pw_dir points into that buffer, read before it goes.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let mut buf = vec![0 as libc::c_char; 4096];
        let rc = libc::getpwuid_r(
            libc::getuid(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        );
        if rc != 0 || out.is_null() || pw.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pw.pw_dir);
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
    }
}

/// Looks `host` up in a netrc file: returns (login, password).
pub fn netrc_lookup(text: &str, host: &str) -> Option<(Option<String>, Option<String>)> {
    let mut tokens = text.split_whitespace();
    let mut found: Option<(Option<String>, Option<String>)> = None;
    let mut default: Option<(Option<String>, Option<String>)> = None;
    let mut current: Option<bool> = None; // Some(true) = matching machine, Some(false) = default
    while let Some(t) = tokens.next() {
        match t {
            "machine" => {
                if found.is_some() {
                    break;
                }
                let m = tokens.next()?;
                current = if m == host { Some(true) } else { None };
                if current == Some(true) {
                    found = Some((None, None));
                }
            }
            "default" => {
                if found.is_some() {
                    break;
                }
                current = Some(false);
                default = Some((None, None));
            }
            "login" | "password" | "account" => {
                let v = tokens.next().map(str::to_string);
                let slot = match current {
                    Some(true) => found.as_mut(),
                    Some(false) => default.as_mut(),
                    None => None,
                };
                if let Some(slot) = slot {
                    match t {
                        "login" => slot.0 = v,
                        "password" => slot.1 = v,
                        _ => {}
                    }
                }
            }
            "macdef" => current = None,
            _ => {}
        }
    }
    found.or(default)
}

impl SiteConfig {
    /// Builds the site's configuration; may prompt for the password on a terminal.
    pub fn from_args(url: &str, opts: &OptionList) -> Result<Self> {
        let url = SiteUrl::parse(url)?;
        let tls = tls_config(opts)?;
        let protection = match opts.value("prot")? {
            None | Some("P") | Some("p") => Protection::Private,
            Some("C") | Some("c") => Protection::Clear,
            Some(v) => return Err(FtpError::Invalid(format!("prot must be P or C, not {v:?}"))),
        };
        let ccc = opts.has("ccc");
        if ccc && protection == Protection::Clear {
            return Err(FtpError::Invalid(
                "ccc with prot=C would send everything after login in clear; refused".into(),
            ));
        }
        let timeout = Duration::from_secs(opts.parsed::<u64>("timeout")?.unwrap_or(30).max(1));
        let mut user = opts
            .get("user")
            .map(str::to_string)
            .or_else(|| url.user.clone());
        let mut password = None;
        if let Some(pf) = opts.value("password_file")? {
            password = Some(read_secret_file(Path::new(pf), "password file")?);
        } else if let Ok(p) = std::env::var("FTPSFS_PASSWORD") {
            password = Some(p);
        } else if opts.has("netrc") {
            let path = match opts.get("netrc") {
                Some(p) => PathBuf::from(p),
                None => home_dir().map(|h| h.join(".netrc")).ok_or_else(|| {
                    FtpError::Invalid("netrc: no HOME to find ~/.netrc in".into())
                })?,
            };
            let text = read_secret_file(&path, "netrc")?;
            match netrc_lookup(&text, &url.host) {
                Some((login, pw)) => {
                    if user.is_none() {
                        user = login;
                    }
                    password = pw;
                }
                None => {
                    return Err(FtpError::Invalid(format!(
                        "netrc {} has no entry for {}",
                        path.display(),
                        url.host
                    )))
                }
            }
        }
        let user = user.unwrap_or_else(|| "anonymous".to_string());
        let password = match password {
            Some(p) => p,
            None if user == "anonymous" || user == "ftp" => "ftpsfs@".to_string(),
            None if std::io::stdin().is_terminal() => {
                rpassword::prompt_password(format!("Password for {user}@{}: ", url.host))
                    .map_err(|e| FtpError::Invalid(format!("cannot read the password: {e}")))?
            }
            None => {
                return Err(FtpError::Invalid(format!(
                    "no password for {user}: give password_file=, FTPSFS_PASSWORD, netrc, or run on a terminal to be asked"
                )))
            }
        };
        let connect = ConnectOptions {
            host: url.host.clone(),
            port: url.port,
            implicit: url.implicit,
            protection,
            ccc,
            user,
            password: Secret::new(password),
            timeout,
            max_listing_entries: opts
                .parsed::<usize>("max_entries")?
                .unwrap_or(crate::ftp::session::DEFAULT_MAX_LISTING_ENTRIES)
                .max(1),
            encoding: match opts.value("encoding")? {
                None => crate::names::NameCodec::default(),
                Some(label) => crate::names::NameCodec::for_label(label).ok_or_else(|| {
                    FtpError::Invalid(format!(
                        "encoding={label}: unknown charset (try latin1, windows-1252, shift_jis, utf-8)"
                    ))
                })?,
            },
            server: Default::default(),
        };
        Ok(SiteConfig { url, connect, tls })
    }
}

fn tls_config(opts: &OptionList) -> Result<TlsConfig> {
    let mut tls = TlsConfig {
        cafile: opts.value("cafile")?.map(PathBuf::from),
        ..TlsConfig::default()
    };
    if let Some(fp) = opts.value("fingerprint")? {
        tls.fingerprint = Some(parse_fingerprint(fp).ok_or_else(|| {
            FtpError::Invalid(format!(
                "fingerprint must be sha256:<64 hex digits>, not {fp:?}"
            ))
        })?);
    }
    tls.insecure = opts.has("insecure");
    if let Some(v) = opts.value("min_tls")? {
        tls.min_version = TlsVersion::parse(v)
            .ok_or_else(|| FtpError::Invalid(format!("min_tls must be 1.2 or 1.3, not {v:?}")))?;
    }
    if let Some(v) = opts.value("max_tls")? {
        tls.max_version =
            Some(TlsVersion::parse(v).ok_or_else(|| {
                FtpError::Invalid(format!("max_tls must be 1.2 or 1.3, not {v:?}"))
            })?);
    }
    tls.client_cert = opts.value("cert")?.map(PathBuf::from);
    tls.client_key = opts.value("key")?.map(PathBuf::from);
    if let Some(f) = opts.value("key_password_file")? {
        tls.client_key_password =
            Some(read_secret_file(Path::new(f), "key password file")?.into_bytes());
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = SiteUrl::parse("ftp://bob@example.org/pub/").unwrap();
        assert_eq!(
            u,
            SiteUrl {
                implicit: false,
                user: Some("bob".into()),
                host: "example.org".into(),
                port: 21,
                path: "/pub".into()
            }
        );
        let u = SiteUrl::parse("ftps://127.0.0.1:2990").unwrap();
        assert_eq!(
            (u.implicit, u.port, u.path.as_str(), u.user),
            (true, 2990, "/", None)
        );
        let u = SiteUrl::parse("ftp://[::1]:2121/a%20b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 2121, "/a b")
        );
        let u = SiteUrl::parse("ftp://me%40corp@h").unwrap();
        assert_eq!(u.user.as_deref(), Some("me@corp"));
        for bad in [
            "http://h",
            "ftp://",
            "ftp://u:pw@h/",
            "ftp://h:0",
            "ftp://h:99999",
            "ftp://h/%0d%0aDELE",
            "ftp://[::1",
        ] {
            assert!(SiteUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn option_lists() {
        let o = OptionList::parse(&["cafile=/x,ccc", "timeout=5", "prot=C"]);
        assert_eq!(o.get("cafile"), Some("/x"));
        assert!(o.has("ccc"));
        assert_eq!(o.parsed::<u64>("timeout").unwrap(), Some(5));
        assert!(OptionList::parse(&["timeout=x"])
            .parsed::<u64>("timeout")
            .is_err());
        assert!(OptionList::parse(&["cafile"]).value("cafile").is_err());
    }

    #[test]
    fn netrc() {
        let t = "machine a login u1 password p1\nmachine b\n login u2\n password p2\ndefault login d password dp";
        assert_eq!(
            netrc_lookup(t, "b"),
            Some((Some("u2".into()), Some("p2".into())))
        );
        assert_eq!(
            netrc_lookup(t, "zz"),
            Some((Some("d".into()), Some("dp".into())))
        );
        assert_eq!(netrc_lookup("machine a login x", "b"), None);
    }

    #[test]
    fn tls_options() {
        let fp = "sha256:".to_string() + &"0A".repeat(32);
        let t = tls_config(&OptionList::parse(&[format!(
            "fingerprint={fp},min_tls=1.3,insecure"
        )]))
        .unwrap();
        assert_eq!(t.fingerprint, Some(vec![0x0a; 32]));
        assert_eq!(t.min_version, TlsVersion::Tls13);
        assert!(t.insecure);
        assert!(tls_config(&OptionList::parse(&["min_tls=1.1"])).is_err());
        assert!(tls_config(&OptionList::parse(&["fingerprint=abc"])).is_err());
    }
}
