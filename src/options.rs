//! The one table of `-o` options: which exist, which only a mount uses, which
//! mount(8)/fstab pass and ftpsfs ignores, and the text `--help` shows for each.
//! `reject_unknown`, `ftpsfs check` and `--help` all read it, and a test holds the
//! man page and the README to it, so they cannot drift apart.

use crate::config::OptionList;
use crate::error::{FtpError, Result};

/// Who uses an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Reaching and logging in to the site: `check` and the mount.
    Connection,
    /// Only the mount; `check` accepts and ignores it (one fstab line checks as is).
    Mount,
}

/// One `-o` option.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    pub name: &'static str,
    /// How it is written in help (`cafile=PATH`).
    pub usage: &'static str,
    pub help: &'static str,
    pub scope: Scope,
}

/// A group of options as `--help` shows them.
pub struct OptionGroup {
    pub title: &'static str,
    pub options: &'static [OptionSpec],
}

const fn c(name: &'static str, usage: &'static str, help: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        usage,
        help,
        scope: Scope::Connection,
    }
}

const fn m(name: &'static str, usage: &'static str, help: &'static str) -> OptionSpec {
    OptionSpec {
        name,
        usage,
        help,
        scope: Scope::Mount,
    }
}

/// Every option ftpsfs acts on, grouped as `--help` lists them.
pub const GROUPS: &[OptionGroup] = &[
    OptionGroup {
        title: "Trust and TLS",
        options: &[
            c("cafile", "cafile=PATH", "trust this CA file instead of the system CAs"),
            c("fingerprint", "fingerprint=sha256:HEX", "accept exactly the certificate with this SHA-256 fingerprint"),
            c("insecure", "insecure", "do not verify the certificate (warned; anyone on the path can read and change your data)"),
            c("min_tls", "min_tls=1.2|1.3", "lowest TLS version (default 1.2)"),
            c("max_tls", "max_tls=1.2|1.3", "highest TLS version"),
            c("cert", "cert=PATH", "client certificate (mutual TLS)"),
            c("key", "key=PATH", "its private key (default: in cert=)"),
            c("key_password_file", "key_password_file=PATH", "passphrase of an encrypted key=, one line"),
            c("prot", "prot=P|C", "data connections encrypted (P, default) or in clear (C)"),
            c("ccc", "ccc", "clear the command channel after login (data stays encrypted)"),
        ],
    },
    OptionGroup {
        title: "Login",
        options: &[
            c("user", "user=NAME", "log in as NAME (default: the URL's user, else anonymous)"),
            c("password_file", "password_file=PATH", "read the password from PATH (mode 600: refused when others may read it)"),
            c("netrc", "netrc[=PATH]", "take login and password from ~/.netrc or PATH"),
        ],
    },
    OptionGroup {
        title: "Connection",
        options: &[
            c("timeout", "timeout=SECS", "give up an operation after SECS without progress (default 30)"),
            c("max_entries", "max_entries=N", "most entries a listing may have (default 2000000)"),
            c("encoding", "encoding=NAME", "the server's charset for names when not UTF-8 (latin1, windows-1252, shift_jis...)"),
            m("max_conns", "max_conns=N", "control connections in the pool (default 8)"),
            m("keepalive", "keepalive=SECS", "send NOOP on idle connections after SECS idle (default 60; 0: never)"),
            m("ServerAliveInterval", "ServerAliveInterval=SECS", "the same as keepalive= (sshfs's spelling)"),
            m("reconnect", "reconnect", "accepted: ftpsfs always reconnects lost connections"),
        ],
    },
    OptionGroup {
        title: "Caching",
        options: &[
            m("cache_timeout", "cache_timeout=SECS", "trust listings and attributes for SECS (default 5)"),
            m("dir_cache_timeout", "dir_cache_timeout=SECS", "trust directory listings for SECS (default: cache_timeout)"),
            m("attr_timeout", "attr_timeout=SECS", "kernel caches attributes for SECS (default: cache_timeout)"),
            m("entry_timeout", "entry_timeout=SECS", "kernel caches name lookups for SECS (default: cache_timeout)"),
            m("spool_dir", "spool_dir=PATH", "where writes wait for their upload (default ~/.cache/ftpsfs/spool)"),
            m("spool_window", "spool_window=SIZE|all", "a sequential writer keeps only its last SIZE on disk (default 64M; all: every byte)"),
            m("segments", "segments=N", "connections one sequential read of a large, slow file may use (default 4; 1: one stream)"),
            m("inplace", "inplace", "upload straight to the name (servers that forbid rename)"),
            m("strict_dir_times", "strict_dir_times", "a directory time the server cannot set is EPERM (default: skipped, logged once)"),
        ],
    },
    OptionGroup {
        title: "Mount",
        options: &[
            m("ro", "ro", "read-only mount"),
            m("read_only", "read_only", "the same as ro"),
            m("allow_other", "allow_other", "let other users use the mount (implies default_permissions)"),
            m("default_permissions", "default_permissions", "the kernel checks access against the modes shown"),
            m("no_default_permissions", "no_default_permissions", "with allow_other: do not (warned)"),
            m("uid", "uid=N", "show files as owned by user N (default: yours)"),
            m("gid", "gid=N", "show files as owned by group N (default: yours)"),
            m("idmap", "idmap=user", "accepted: files are shown as the mounting user's (uid=, gid=)"),
            m("umask", "umask=OCTAL", "mask of the modes shown (default 0: the server's modes)"),
            m("fsname", "fsname=NAME", "name shown by mount and df"),
            m("auto_unmount", "auto_unmount", "unmount when ftpsfs dies (through fusermount3)"),
        ],
    },
    OptionGroup {
        title: "Logging",
        options: &[
            m("debug", "debug", "the same as -d"),
            m("log_level", "log_level=LEVEL", "error, warn (default), info, debug or trace"),
            m("log_file", "log_file=PATH", "log to PATH (mode 600) instead of syslog or stderr"),
        ],
    },
];

/// What mount(8), fstab and mount.fuse3 pass to every filesystem helper: accepted
/// and ignored, as other FUSE filesystems do (`x-*` and `comment=` too).
pub const IGNORED: &[&str] = &[
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "defaults",
    "nofail",
    "_netdev",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "sync",
    "async",
    "dirsync",
    "mand",
    "nomand",
    "iversion",
    "noiversion",
    "silent",
    "loud",
    "comment",
];

/// Every option ftpsfs acts on.
pub fn all() -> impl Iterator<Item = &'static OptionSpec> {
    GROUPS.iter().flat_map(|g| g.options.iter())
}

fn find(name: &str) -> Option<&'static OptionSpec> {
    all().find(|o| o.name == name)
}

/// True for what mount(8) passes and ftpsfs ignores.
pub fn is_ignored(name: &str) -> bool {
    IGNORED.contains(&name) || name.starts_with("x-")
}

/// Refuses options ftpsfs does not know, so a typo in `fingerprint=` never silently
/// weakens trust. `user` is both the login (`user=NAME`) and fstab's flag (`user`).
pub fn reject_unknown(opts: &OptionList) -> Result<()> {
    for name in opts.names() {
        if find(name).is_none() && !is_ignored(name) {
            return Err(FtpError::Invalid(format!(
                "unknown option {name:?} (ftpsfs --help lists the options)"
            )));
        }
    }
    if let Some(v) = opts.get("idmap") {
        if v != "user" && v != "none" {
            return Err(FtpError::Invalid(format!(
                "idmap={v} is not supported: files are always shown as one user's (idmap=user, uid=, gid=)"
            )));
        }
    }
    Ok(())
}

/// The option list `--help` prints after the usage, grouped as sshfs does.
pub fn help_text() -> String {
    let mut s = String::from("Options for -o (comma-separated, as in fstab):\n");
    for g in GROUPS {
        s.push_str(&format!("\n  {}:\n", g.title));
        for o in g.options {
            s.push_str(&format!("    {:<26} {}\n", o.usage, o.help));
        }
    }
    s.push_str(
        "\n  Accepted and ignored (passed by mount(8) and fstab): rw, nodev, nosuid, noexec,\n  \
         noatime, nodiratime, lazytime, sync, _netdev, nofail, noauto, user, users, x-*, ...\n\
         \n`ftpsfs check URL -o ...` takes the same options (it ignores the mount-only ones).\n\
         See ftpsfs(1) for details, exit statuses and examples.",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_known() {
        let mut names: Vec<&str> = all().map(|o| o.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "an option is listed twice");
        for o in all() {
            assert!(o.usage.starts_with(o.name), "{}", o.usage);
            assert!(!is_ignored(o.name) || o.name == "user", "{}", o.name);
        }
    }

    #[test]
    fn unknown_and_ignored() {
        assert!(reject_unknown(&OptionList::parse(&[
            "rw,nodiratime,lazytime,sync,x-systemd.automount,_netdev,user,noatime"
        ]))
        .is_ok());
        let e = reject_unknown(&OptionList::parse(&["fingerprnt=sha256:00"])).unwrap_err();
        assert!(e.to_string().contains("fingerprnt"), "{e}");
        assert!(reject_unknown(&OptionList::parse(&["idmap=user,reconnect,read_only"])).is_ok());
        assert!(reject_unknown(&OptionList::parse(&["idmap=file"])).is_err());
    }
}
