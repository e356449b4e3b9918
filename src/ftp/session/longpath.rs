//! Paths too long for one command line.
//!
//! Design. Servers bound the command line: proftpd never answers a line over ~4 KiB,
//! vsftpd refuses it (`500 Input line too long`), pyftpdlib over 2 KiB. Deep trees
//! (node_modules, maildirs) have longer paths than that. So no command line longer
//! than [`MAX_COMMAND_LINE`] is ever sent: a command whose absolute path would make
//! a longer line changes into the path's parent first and names the file relative
//! to it (as lftp does). The change of directory may itself be too long for one
//! line: it goes step by step, each `CWD` a chunk of components short enough. The
//! connection remembers its current directory (`cwd`), so a run of commands in one
//! deep directory costs its `CWD`s once; absolute paths are unaffected by it, and a
//! relative path given by a caller is taken from the login directory, restored
//! first. What cannot be named within the bound (a single component too long) is
//! `ENAMETOOLONG` at once, without a word to the server.

use super::{check_path, parse_pwd, FtpConnection};
use crate::error::{FtpError, Result};
use crate::ftp::command::{Command, Verb};

/// Longest command line sent (bytes, without CRLF).
pub const MAX_COMMAND_LINE: usize = 512;

/// Where the server's current directory is, as far as this connection knows.
#[derive(Debug, Default, Clone)]
pub(super) struct WorkDir {
    /// The login directory, learnt (PWD) before the first change away from it.
    home: Option<String>,
    /// The current directory; `None`: the login directory, or unknown after a
    /// failed change (`moved` tells which).
    cwd: Option<String>,
    /// True once a CWD was sent.
    moved: bool,
    /// The last `path_args` named something relative to a directory changed into.
    last_relative: bool,
    /// ... to a directory changed into before it, without a CWD of its own.
    last_reused: bool,
}

impl WorkDir {
    /// Notes a CWD done outside this module (`check`'s probe).
    pub(super) fn set(&mut self, dir: String) {
        if !self.moved {
            // Still the login directory (the probe changes into the PWD's).
            self.home.get_or_insert_with(|| dir.clone());
        }
        self.cwd = Some(dir);
        self.moved = true;
    }
}

/// `"/a/b/c"` → `"/a/b"`; `"/a"` → `"/"`.
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "",
    }
}

/// `path` relative to `dir` when it lies below it.
fn below<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    if dir == "/" {
        return path.strip_prefix('/').filter(|r| !r.is_empty());
    }
    path.strip_prefix(dir)?
        .strip_prefix('/')
        .filter(|r| !r.is_empty())
}

/// The deepest directory holding all of `paths` (absolute).
fn common_dir(paths: &[&str]) -> String {
    let mut dir = parent(paths[0]).to_string();
    while paths.iter().any(|p| below(p, &dir).is_none()) {
        if dir == "/" || dir.is_empty() {
            return "/".into();
        }
        dir = parent(&dir).to_string();
    }
    dir
}

fn too_long(what: &str) -> FtpError {
    FtpError::NameTooLong(format!(
        "{what}: a name too long for one FTP command line ({MAX_COMMAND_LINE} bytes)"
    ))
}

impl FtpConnection {
    /// The arguments naming `paths` in one command whose line has `fixed` bytes
    /// besides them (one path, or RNFR/RNTO's two, each on its own line): the
    /// paths themselves when the lines stay short, else names relative to a
    /// directory changed into first.
    pub(super) fn path_args(&mut self, fixed: usize, paths: &[&str]) -> Result<Vec<String>> {
        for p in paths {
            check_path(p)?;
        }
        let fits = |a: &str| fixed + a.len() <= MAX_COMMAND_LINE;
        let relative = paths.iter().any(|p| !p.starts_with('/'));
        if relative {
            // Callers' relative paths start from the login directory.
            if paths.iter().all(|p| fits(p)) {
                self.go_home()?;
                return Ok(paths.iter().map(|p| p.to_string()).collect());
            }
            return Err(too_long(paths[0]));
        }
        self.workdir.last_relative = false;
        self.workdir.last_reused = false;
        if paths.iter().all(|p| fits(p)) {
            // Whole paths, from the login directory: a server's current directory
            // near its PATH_MAX breaks even absolute paths (proftpd: "Invalid
            // argument"), so the first such command after a long one goes back.
            self.go_home()?;
            return Ok(paths.iter().map(|p| p.to_string()).collect());
        }
        self.workdir.last_relative = true;
        // Where we are already, if that is enough.
        if let Some(cwd) = self.workdir.cwd.clone() {
            let here: Option<Vec<String>> = paths
                .iter()
                .map(|p| {
                    if fits(p) {
                        Some(p.to_string())
                    } else {
                        below(p, &cwd).filter(|r| fits(r)).map(str::to_string)
                    }
                })
                .collect();
            if let Some(args) = here {
                self.workdir.last_reused = true;
                return Ok(args);
            }
        }
        // The deepest directory holding the paths too long to give whole (a path
        // that fits stays absolute, whatever the directory).
        let long: Vec<&str> = paths.iter().copied().filter(|p| !fits(p)).collect();
        let dir = common_dir(&long);
        let args: Vec<String> = paths
            .iter()
            .map(|p| {
                if fits(p) {
                    Ok(p.to_string())
                } else {
                    below(p, &dir)
                        .filter(|r| fits(r))
                        .map(str::to_string)
                        .ok_or_else(|| too_long(p))
                }
            })
            .collect::<Result<_>>()?;
        self.workdir.last_reused = self.workdir.cwd.as_deref() == Some(dir.as_str());
        self.change_dir(&dir)?;
        Ok(args)
    }

    /// Runs `op` with the arguments for `paths` (see `path_args`). When it is
    /// refused and they were relative to a directory changed into earlier, that
    /// directory may have been removed and made again since (vsftpd's current
    /// directory is then the removed one): `op` runs once more after a fresh change
    /// of directory. A refused command changed nothing, so the repeat is safe.
    pub(super) fn on_paths<T>(
        &mut self,
        fixed: usize,
        paths: &[&str],
        mut op: impl FnMut(&mut Self, Vec<String>) -> Result<T>,
    ) -> Result<T> {
        let args = self.path_args(fixed, paths)?;
        let r = match op(self, args) {
            Err(e) if self.workdir.last_reused && e.reply_code().is_some() => {
                log::debug!("{e}: again after a fresh change of directory");
                self.forget_cwd();
                let args = self.path_args(fixed, paths)?;
                op(self, args)
            }
            r => r,
        };
        r.map_err(|e| self.deep(e))
    }

    /// Stops trusting the current directory: the next long path changes into its
    /// directory anew (a listing of a removed directory is empty, not an error,
    /// and a transfer cannot be repeated: they always start afresh).
    pub(super) fn forget_cwd(&mut self) {
        if self.workdir.cwd != self.workdir.home {
            self.workdir.cwd = None;
        }
    }

    /// The argument for a command on the directory `dir` itself (a listing): `dir`,
    /// or `.` after changing into it when its path is too long. (Not an empty
    /// argument: proftpd 1.3.8 crashes on an `MLSD` without one in a deep directory.)
    pub(super) fn dir_arg(&mut self, fixed: usize, dir: &str) -> Result<String> {
        check_path(dir)?;
        if fixed + dir.len() <= MAX_COMMAND_LINE || !dir.starts_with('/') {
            self.go_home()?;
            return Ok(dir.to_string());
        }
        self.change_dir(dir)?;
        Ok(".".to_string())
    }

    /// `path`'s argument without changing directory (a batch in progress), or
    /// `None` when it would need one.
    pub(super) fn path_arg_here(&self, fixed: usize, path: &str) -> Option<String> {
        let fits = |a: &str| fixed + a.len() <= MAX_COMMAND_LINE;
        if fits(path) && (path.starts_with('/') || !self.workdir.moved) {
            return Some(path.to_string());
        }
        let cwd = self.workdir.cwd.as_deref()?;
        below(path, cwd).filter(|r| fits(r)).map(str::to_string)
    }

    /// A refusal of a command on a long path, explained: proftpd answers `550 ...:
    /// Invalid argument` when the path resolved on its side passes PATH_MAX, which
    /// is ENAMETOOLONG (that of "File name too long" answers comes from the text).
    pub(super) fn deep(&self, e: FtpError) -> FtpError {
        match &e {
            FtpError::Reply { command, text, .. }
                if self.workdir.last_relative
                    && text.to_ascii_lowercase().contains("invalid argument") =>
            {
                FtpError::NameTooLong(format!(
                    "{command}: the server cannot hold a path this long ({text})"
                ))
            }
            _ => e,
        }
    }

    /// True when the last `path_args` named a path from a directory changed into.
    pub(super) fn workdir_relative(&self) -> bool {
        self.workdir.last_relative
    }

    /// After an upload of a long path acknowledged by the server: its SIZE (asked
    /// from the same directory) must show the bytes sent (`bytes` or more when
    /// appending), or the upload is an error. pure-ftpd 1.0.50 answers 226 to a
    /// STOR whose path passes its limit and stores nothing.
    pub(super) fn check_stored(&mut self, arg: &str, bytes: u64, append: bool) -> Result<()> {
        let r = self.command(&Command::size(arg))?;
        let size = Verb::Size
            .completes(r.code)
            .then(|| r.text().trim().parse::<u64>().ok())
            .flatten();
        match size {
            Some(n) if n == bytes || (append && n >= bytes) => Ok(()),
            _ => Err(FtpError::NameTooLong(format!(
                "the server acknowledged an upload to a path this long but does not \
                 show it ({} {})",
                r.code,
                r.text()
            ))),
        }
    }

    /// Back to the login directory (for whole paths, and a caller's relative ones);
    /// nothing to do unless a long path moved away from it.
    fn go_home(&mut self) -> Result<()> {
        if !self.workdir.moved || self.workdir.cwd == self.workdir.home {
            return Ok(());
        }
        let home = self.workdir.home.clone().unwrap_or_else(|| "/".into());
        self.change_dir(&home)
    }

    /// Makes `dir` (absolute) the current directory: from where we are when it lies
    /// below, else from the root; a `CWD` per chunk of components that fits a line.
    fn change_dir(&mut self, dir: &str) -> Result<()> {
        if self.workdir.cwd.as_deref() == Some(dir) {
            return Ok(());
        }
        if self.workdir.home.is_none() && !self.workdir.moved {
            let r = self.command(&Command::pwd())?;
            self.workdir.home = Some(
                Verb::Pwd
                    .completes(r.code)
                    .then(|| parse_pwd(&r.text()))
                    .flatten()
                    .unwrap_or_else(|| "/".into()),
            );
        }
        let (mut at, rest) = match self.workdir.cwd.clone() {
            Some(cwd) if below(dir, &cwd).is_some() => {
                let rest = below(dir, &cwd).unwrap_or_default().to_string();
                (cwd, rest)
            }
            _ => ("/".to_string(), dir.trim_start_matches('/').to_string()),
        };
        // Chunks of whole components, each `CWD <chunk>` within the bound.
        let limit = MAX_COMMAND_LINE - crate::ftp::command::fixed_len(Command::cwd) - 1;
        let mut steps: Vec<String> = Vec::new();
        let mut cur = String::new();
        for comp in rest.split('/').filter(|c| !c.is_empty()) {
            if comp.len() > limit {
                return Err(too_long(dir));
            }
            if !cur.is_empty() && cur.len() + 1 + comp.len() > limit {
                steps.push(std::mem::take(&mut cur));
            }
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(comp);
        }
        if !cur.is_empty() || steps.is_empty() {
            steps.push(cur);
        }
        if at == "/" {
            // The first step is absolute, wherever the server's directory is now.
            steps[0].insert(0, '/');
        }
        self.workdir.moved = true;
        for step in steps {
            let r = self.command(&Command::cwd(&step))?;
            if let Err(e) = Verb::Cwd.accept(r) {
                self.workdir.cwd = None;
                return Err(e);
            }
            at = if step.starts_with('/') {
                step
            } else if at == "/" {
                format!("/{step}")
            } else {
                format!("{at}/{step}")
            };
            self.workdir.cwd = Some(at.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_relative_names() {
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(parent("/a"), "/");
        assert_eq!(below("/a/b/c", "/a"), Some("b/c"));
        assert_eq!(below("/a/b", "/"), Some("a/b"));
        assert_eq!(below("/ab/c", "/a"), None);
        assert_eq!(below("/a", "/a"), None);
        assert_eq!(common_dir(&["/x/y/f", "/x/y/g"]), "/x/y");
        assert_eq!(common_dir(&["/x/y/f", "/x/z/g"]), "/x");
        assert_eq!(common_dir(&["/x/f", "/y/g"]), "/");
    }
}
