//! The commands ftpsfs sends, in one place: the wire form of each, and the replies
//! that complete it (RFC 959, RFC 2228 for AUTH/PBSZ/PROT/CCC, RFC 2389 for
//! FEAT/OPTS, RFC 2428 for EPSV, RFC 3659 for SIZE/MDTM/MLST/MLSD/REST STREAM, and
//! the common MFMT and SITE extensions).
//!
//! Design. A [`Command`] is made by one constructor per command, which writes its
//! line; nothing else in src/ftp formats a command line. Its [`Verb`] knows the
//! positive replies that complete it ([`Verb::completes`]) and those a reply to it
//! can carry at all ([`Verb::fits`]: the preliminary 1xx of a transfer too), which is
//! how replies a server sent out of order are matched back to their commands
//! (`session::order`). A refusal becomes an error in one place, [`Command::accept`]
//! (or [`Verb::accept`] for a reply whose command is gone).
//! A password never reaches a log: [`Command::shown`] hides it.

use super::reply::{code, Reply};
use super::session::Protection;
use crate::error::Result;

/// The verb of a command ftpsfs sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Auth,
    User,
    Pass,
    Pbsz,
    Prot,
    Ccc,
    Feat,
    Opts,
    Type,
    Pwd,
    Cwd,
    Epsv,
    Pasv,
    Rest,
    Retr,
    Stor,
    Appe,
    Mlsd,
    List,
    Abor,
    Noop,
    Quit,
    Size,
    Mdtm,
    Mlst,
    Dele,
    Mkd,
    Rmd,
    Rnfr,
    Rnto,
    Site,
    Mfmt,
}

impl Verb {
    /// The verb as sent.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Auth => "AUTH",
            Verb::User => "USER",
            Verb::Pass => "PASS",
            Verb::Pbsz => "PBSZ",
            Verb::Prot => "PROT",
            Verb::Ccc => "CCC",
            Verb::Feat => "FEAT",
            Verb::Opts => "OPTS",
            Verb::Type => "TYPE",
            Verb::Pwd => "PWD",
            Verb::Cwd => "CWD",
            Verb::Epsv => "EPSV",
            Verb::Pasv => "PASV",
            Verb::Rest => "REST",
            Verb::Retr => "RETR",
            Verb::Stor => "STOR",
            Verb::Appe => "APPE",
            Verb::Mlsd => "MLSD",
            Verb::List => "LIST",
            Verb::Abor => "ABOR",
            Verb::Noop => "NOOP",
            Verb::Quit => "QUIT",
            Verb::Size => "SIZE",
            Verb::Mdtm => "MDTM",
            Verb::Mlst => "MLST",
            Verb::Dele => "DELE",
            Verb::Mkd => "MKD",
            Verb::Rmd => "RMD",
            Verb::Rnfr => "RNFR",
            Verb::Rnto => "RNTO",
            Verb::Site => "SITE",
            Verb::Mfmt => "MFMT",
        }
    }

    /// True for the commands that open a data connection.
    pub fn is_transfer(self) -> bool {
        matches!(
            self,
            Verb::Retr | Verb::Stor | Verb::Appe | Verb::Mlsd | Verb::List
        )
    }

    /// True when `c` is a positive reply that means the command did its job (the
    /// final reply of a transfer; 331 "password please" for USER).
    pub fn completes(self, c: u16) -> bool {
        use code::*;
        match self {
            Verb::Auth => c == AUTH_OK,
            Verb::User => matches!(c, LOGGED_IN | NEED_PASSWORD | NEED_ACCOUNT),
            Verb::Pass => matches!(c, LOGGED_IN | SUPERFLUOUS),
            // Any positive reply (some servers answer PBSZ/PROT with 2xx variants).
            Verb::Pbsz | Verb::Prot => (200..400).contains(&c),
            Verb::Ccc | Verb::Type | Verb::Noop => c == OK,
            Verb::Opts => matches!(c, OK | SUPERFLUOUS),
            Verb::Feat => c == FEATURES,
            Verb::Pwd => c == PATH_CREATED,
            Verb::Cwd | Verb::Dele | Verb::Rmd | Verb::Rnto => matches!(c, FILE_ACTION_OK | OK),
            Verb::Epsv => c == EXTENDED_PASSIVE,
            Verb::Pasv => c == PASSIVE,
            Verb::Rest | Verb::Rnfr => c == PENDING,
            Verb::Retr | Verb::Stor | Verb::Appe | Verb::Mlsd | Verb::List => {
                matches!(c, TRANSFER_COMPLETE | FILE_ACTION_OK)
            }
            Verb::Abor => matches!(c, ABORTED | TRANSFER_COMPLETE),
            Verb::Quit => c == CLOSING,
            Verb::Size | Verb::Mdtm => c == FILE_STATUS,
            Verb::Mlst => c == FILE_ACTION_OK,
            Verb::Mkd => matches!(c, PATH_CREATED | FILE_ACTION_OK),
            // SITE CHMOD/UTIME and MFMT: 200, 213 (MFMT's own) or 250 by server.
            Verb::Site | Verb::Mfmt => matches!(c, OK | FILE_STATUS | FILE_ACTION_OK),
        }
    }

    /// True when a positive `c` can be a reply to this command at all: one that
    /// completes it, or a transfer's preliminary reply. (Negative codes fit every
    /// command; see `session::order`.)
    pub fn fits(self, c: u16) -> bool {
        self.completes(c)
            || (self.is_transfer() && matches!(c, code::ALREADY_OPEN | code::OPENING_DATA))
    }

    /// `r`, the reply to this command, when it completes it; else the refusal as
    /// the error the caller returns.
    pub fn accept(self, r: Reply) -> Result<Reply> {
        if self.completes(r.code) {
            Ok(r)
        } else {
            Err(r.into_error(self.name()))
        }
    }
}

/// One command line, ready to send. Its `Debug` is its [`Command::shown`] line.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    verb: Verb,
    line: String,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.shown())
    }
}

impl Command {
    fn bare(verb: Verb) -> Self {
        Command {
            verb,
            line: verb.name().to_string(),
        }
    }

    fn with(verb: Verb, arg: impl std::fmt::Display) -> Self {
        Command {
            verb,
            line: format!("{} {arg}", verb.name()),
        }
    }

    pub fn verb(&self) -> Verb {
        self.verb
    }

    /// The line as sent (without CRLF).
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The line as logged: a password never shows.
    pub fn shown(&self) -> &str {
        match self.verb {
            Verb::Pass => "PASS ***",
            _ => &self.line,
        }
    }

    /// What to call the command in an error: the verb, with its argument where
    /// that is a keyword ("PROT C", "TYPE I"), never a path or a password.
    pub fn label(&self) -> &str {
        match self.verb {
            Verb::Auth | Verb::Pbsz | Verb::Prot | Verb::Type | Verb::Opts => &self.line,
            v => v.name(),
        }
    }

    /// `r`, the reply to this command, when it completes it; else the refusal as
    /// the error the caller returns.
    pub fn accept(&self, r: Reply) -> Result<Reply> {
        if self.verb.completes(r.code) {
            Ok(r)
        } else {
            Err(r.into_error(self.label()))
        }
    }

    // ---- session setup (RFC 959 login, RFC 2228 security, RFC 2389 features) ----

    pub fn auth_tls() -> Self {
        Command::with(Verb::Auth, "TLS")
    }
    pub fn user(name: &str) -> Self {
        Command::with(Verb::User, name)
    }
    pub fn pass(password: &str) -> Self {
        Command::with(Verb::Pass, password)
    }
    pub fn pbsz0() -> Self {
        Command::with(Verb::Pbsz, 0)
    }
    pub fn prot(p: Protection) -> Self {
        let level = match p {
            Protection::Private => "P",
            Protection::Clear => "C",
        };
        Command::with(Verb::Prot, level)
    }
    pub fn ccc() -> Self {
        Command::bare(Verb::Ccc)
    }
    pub fn feat() -> Self {
        Command::bare(Verb::Feat)
    }
    pub fn opts_utf8_on() -> Self {
        Command::with(Verb::Opts, "UTF8 ON")
    }
    /// `OPTS MLST type;size;...;`: the facts MLSD/MLST should send.
    pub fn opts_mlst(facts: &str) -> Self {
        Command::with(Verb::Opts, format_args!("MLST {facts}"))
    }
    pub fn type_image() -> Self {
        Command::with(Verb::Type, "I")
    }
    pub fn pwd() -> Self {
        Command::bare(Verb::Pwd)
    }
    pub fn cwd(dir: &str) -> Self {
        Command::with(Verb::Cwd, dir)
    }
    pub fn noop() -> Self {
        Command::bare(Verb::Noop)
    }
    pub fn quit() -> Self {
        Command::bare(Verb::Quit)
    }

    // ---- data connections and transfers ----

    pub fn epsv() -> Self {
        Command::bare(Verb::Epsv)
    }
    pub fn pasv() -> Self {
        Command::bare(Verb::Pasv)
    }
    pub fn rest(offset: u64) -> Self {
        Command::with(Verb::Rest, offset)
    }
    pub fn retr(path: &str) -> Self {
        Command::with(Verb::Retr, path)
    }
    pub fn stor(path: &str) -> Self {
        Command::with(Verb::Stor, path)
    }
    pub fn appe(path: &str) -> Self {
        Command::with(Verb::Appe, path)
    }
    pub fn mlsd(dir: &str) -> Self {
        Command::with(Verb::Mlsd, dir)
    }
    /// `LIST -a dir`: with dot files (every server here takes the flag).
    pub fn list_all(dir: &str) -> Self {
        Command::with(Verb::List, format_args!("-a {dir}"))
    }
    pub fn abor() -> Self {
        Command::bare(Verb::Abor)
    }

    // ---- files and directories ----

    pub fn size(path: &str) -> Self {
        Command::with(Verb::Size, path)
    }
    pub fn mdtm(path: &str) -> Self {
        Command::with(Verb::Mdtm, path)
    }
    pub fn mlst(path: &str) -> Self {
        Command::with(Verb::Mlst, path)
    }
    pub fn dele(path: &str) -> Self {
        Command::with(Verb::Dele, path)
    }
    pub fn mkd(path: &str) -> Self {
        Command::with(Verb::Mkd, path)
    }
    pub fn rmd(path: &str) -> Self {
        Command::with(Verb::Rmd, path)
    }
    pub fn rnfr(path: &str) -> Self {
        Command::with(Verb::Rnfr, path)
    }
    pub fn rnto(path: &str) -> Self {
        Command::with(Verb::Rnto, path)
    }
    pub fn site_chmod(mode: u32, path: &str) -> Self {
        Command::with(Verb::Site, format_args!("CHMOD {:o} {path}", mode & 0o7777))
    }
    /// `MFMT YYYYMMDDHHMMSS path` (the time as `timeconv::format_mfmt` writes it).
    pub fn mfmt(time: &str, path: &str) -> Self {
        Command::with(Verb::Mfmt, format_args!("{time} {path}"))
    }
    /// `SITE UTIME path atime mtime ctime UTC` (proftpd's mod_site_misc).
    pub fn site_utime(path: &str, time: &str) -> Self {
        Command::with(
            Verb::Site,
            format_args!("UTIME {path} {time} {time} {time} UTC"),
        )
    }
    /// `MDTM YYYYMMDDHHMMSS path`: vsftpd's way to set a time. Its verb is MDTM,
    /// whose `completes` is the query's 213: judge the answer as MFMT's
    /// (`Verb::Mfmt.completes`), as every way of setting a time is.
    pub fn mdtm_set(time: &str, path: &str) -> Self {
        Command::with(Verb::Mdtm, format_args!("{time} {path}"))
    }
}

/// Bytes of the line `make` writes for a path, besides the path itself: what a
/// long path may add before the line passes the server's bound (`longpath`).
pub fn fixed_len(make: impl Fn(&str) -> Command) -> usize {
    make("").line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_as_servers_expect_them() {
        assert_eq!(Command::auth_tls().line(), "AUTH TLS");
        assert_eq!(Command::pbsz0().line(), "PBSZ 0");
        assert_eq!(Command::prot(Protection::Private).line(), "PROT P");
        assert_eq!(Command::prot(Protection::Clear).line(), "PROT C");
        assert_eq!(Command::type_image().line(), "TYPE I");
        assert_eq!(Command::rest(4096).line(), "REST 4096");
        assert_eq!(Command::list_all("/d").line(), "LIST -a /d");
        assert_eq!(
            Command::site_chmod(0o100644, "/f").line(),
            "SITE CHMOD 644 /f"
        );
        assert_eq!(
            Command::site_utime("/f", "20010203040506").line(),
            "SITE UTIME /f 20010203040506 20010203040506 20010203040506 UTC"
        );
        assert_eq!(
            Command::mdtm_set("20010203040506", "/f").line(),
            "MDTM 20010203040506 /f"
        );
        assert_eq!(
            Command::opts_mlst("type;size;").line(),
            "OPTS MLST type;size;"
        );
        assert_eq!(fixed_len(Command::size), "SIZE ".len());
        assert_eq!(fixed_len(|p| Command::site_chmod(0o7777, p)), 16);
    }

    #[test]
    fn passwords_never_show() {
        let c = Command::pass("hunter2");
        assert_eq!(c.line(), "PASS hunter2");
        assert!(!c.shown().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.label(), "PASS");
        assert_eq!(Command::prot(Protection::Clear).label(), "PROT C");
        assert_eq!(Command::dele("/secret/path").label(), "DELE");
    }

    #[test]
    fn replies_complete_or_refuse_their_command() {
        let reply = |code| Reply {
            code,
            lines: vec!["text".into()],
        };
        assert!(Verb::Mkd.accept(reply(257)).is_ok());
        assert!(Verb::Mkd.accept(reply(250)).is_ok());
        let e = Verb::Mkd.accept(reply(550)).unwrap_err();
        assert_eq!(e.reply_code(), Some(550));
        assert_eq!(e.to_string(), "server refused MKD: 550 text");
        // A reply that is positive but not this command's is a refusal too.
        assert!(Verb::Size.accept(reply(229)).is_err());
        // 150 fits a transfer (preliminary) but does not complete it.
        assert!(Verb::Retr.fits(150) && !Verb::Retr.completes(150));
        assert!(!Verb::Mkd.fits(150));
        assert!(Verb::Epsv.fits(229) && !Verb::Mkd.fits(229));
    }
}
