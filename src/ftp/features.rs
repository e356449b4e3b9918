//! The server's FEAT answer (RFC 2389) and what the client does with it.

/// Capabilities the client acts on. SITE subcommands are not among them: servers
/// list them unevenly (proftpd lists SITE UTIME but not SITE CHMOD, which it has),
/// so the session learns from the first answer instead (`set_mtime`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// Every feature line as the server sent it (trimmed), for `check`.
    pub raw: Vec<String>,
    pub mlst: bool,
    pub utf8: bool,
    pub rest_stream: bool,
    pub mfmt: bool,
    pub size: bool,
    pub mdtm: bool,
    pub epsv: bool,
    /// The MLST facts the server offers, as spelled in FEAT (without `*`).
    pub mlst_facts: Vec<String>,
}

impl Features {
    /// Parses the lines of a 211 FEAT reply (the first and last lines are not features).
    pub fn parse(lines: &[String]) -> Self {
        let mut f = Features::default();
        let n = lines.len();
        for line in lines.iter().take(n.saturating_sub(1)).skip(1) {
            let feat = line.trim();
            if feat.is_empty() {
                continue;
            }
            f.raw.push(feat.to_string());
            let upper = feat.to_ascii_uppercase();
            let mut words = upper.split_whitespace();
            match words.next().unwrap_or("") {
                "MLST" | "MLSD" => {
                    f.mlst = true;
                    if let Some(list) = feat.split_whitespace().nth(1) {
                        f.mlst_facts = list
                            .split(';')
                            .map(|x| x.trim().trim_end_matches('*').to_string())
                            .filter(|x| !x.is_empty())
                            .collect();
                    }
                }
                "UTF8" => f.utf8 = true,
                "REST" => f.rest_stream |= words.next() == Some("STREAM"),
                "MFMT" => f.mfmt = true,
                "SIZE" => f.size = true,
                "MDTM" => f.mdtm = true,
                "EPSV" => f.epsv = true,
                _ => {}
            }
        }
        f
    }
}

impl Features {
    /// The argument of `OPTS MLST` asking only for the facts ftpsfs uses (type,
    /// size, modify, and UNIX.mode or else perm), so that the server computes and
    /// sends less per entry (owner names, unique ids...). `None` when the server
    /// lists no facts or none of these.
    pub fn mlst_opts(&self) -> Option<String> {
        let offered = |want: &str| {
            self.mlst_facts
                .iter()
                .find(|f| f.eq_ignore_ascii_case(want))
                .cloned()
        };
        let mut wanted: Vec<String> = ["type", "size", "modify", "UNIX.mode"]
            .iter()
            .filter_map(|w| offered(w))
            .collect();
        if offered("UNIX.mode").is_none() {
            wanted.extend(offered("perm"));
        }
        if wanted.is_empty() {
            return None;
        }
        Some(wanted.iter().map(|f| format!("{f};")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn proftpd_feat() {
        let f = Features::parse(&lines(&[
            "Features:",
            " AUTH TLS",
            " MFMT",
            " MLST modify*;perm*;size*;type*;unique*;UNIX.group*;UNIX.mode*;UNIX.owner*;",
            " REST STREAM",
            " SITE COPY",
            " SITE MKDIR",
            " SITE UTIME",
            " SIZE",
            " UTF8",
            "End",
        ]));
        assert!(f.mlst && f.mfmt && f.rest_stream && f.size && f.utf8);
        assert!(!f.mdtm && !f.epsv);
        assert_eq!(f.raw.len(), 9);
        assert_eq!(
            f.mlst_opts().as_deref(),
            Some("type;size;modify;UNIX.mode;")
        );
    }

    #[test]
    fn mlst_opts_asks_for_what_is_offered() {
        let f = Features::parse(&lines(&[
            "x",
            " MLST Type*;Size*;Modify*;Perm*;Unique*;",
            "y",
        ]));
        assert_eq!(f.mlst_opts().as_deref(), Some("Type;Size;Modify;Perm;"));
        let f = Features::parse(&lines(&["x", " MLST", "y"]));
        assert!(
            f.mlst && f.mlst_opts().is_none(),
            "no fact list: leave the defaults"
        );
        let f = Features::parse(&lines(&["x", " MLST unique*;lang*;", "y"]));
        assert!(f.mlst_opts().is_none());
    }

    #[test]
    fn vsftpd_feat() {
        let f = Features::parse(&lines(&[
            "Features:",
            " AUTH TLS",
            " EPRT",
            " EPSV",
            " MDTM",
            " PASV",
            " PBSZ",
            " PROT",
            " REST STREAM",
            " SIZE",
            " TVFS",
            "End",
        ]));
        assert!(!f.mlst && !f.mfmt && !f.utf8);
        assert!(f.epsv && f.mdtm && f.rest_stream && f.size);
    }

    #[test]
    fn empty_or_hostile_feat() {
        assert_eq!(Features::parse(&[]), Features::default());
        let f = Features::parse(&lines(&["x", " REST", " MLSTX", "y"]));
        assert!(!f.rest_stream && !f.mlst);
    }
}
