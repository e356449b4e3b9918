//! Which reply belongs to which pipelined command.
//!
//! Design. ftpsfs sends some commands together (DELE/MKD/RMD/SITE with an EPSV for
//! the next transfer, RNFR+RNTO, OPTS+TYPE) and reads one reply per command. RFC 959
//! servers answer in order, but some asynchronous servers answer a fast command
//! (EPSV) before a slow one (MKD) sent earlier. Taking replies blindly in order then
//! turns a created directory into an error and worse. So every reply is checked
//! against the codes its command can get ([`fits`]); positive codes tell the commands
//! of a batch apart (229 only answers EPSV, 257 only MKD, 350 only RNFR...). On a
//! mismatch, [`assign`] gives each positive reply to the one command it fits and the
//! negative ones, which fit any command, to the rest in order; when more than one
//! negative reply had to be placed that way, which error went where is a guess, and
//! the caller redoes the failed command alone (safe: it failed, so nothing changed).
//! The server is then marked as one that reorders (`ServerTraits`) and every later
//! command goes alone, for the rest of the mount.

use crate::ftp::command::Command;
use crate::ftp::reply::Reply;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the connections to one server learn about it, shared by all of them (the
/// pool's connections share one `ConnectOptions`).
#[derive(Debug, Default)]
pub struct ServerTraits {
    reorders: AtomicBool,
}

impl ServerTraits {
    /// False once the server was seen answering pipelined commands out of order.
    pub fn pipelining(&self) -> bool {
        !self.reorders.load(Ordering::Relaxed)
    }

    /// Records that the server reorders replies; logs it the first time only.
    pub fn note_reordering(&self, what: &str) {
        if !self.reorders.swap(true, Ordering::Relaxed) {
            log::warn!(
                "the server answered pipelined commands out of order ({what}): sending \
                 one command at a time from now on"
            );
        }
    }
}

fn negative(code: u16) -> bool {
    code >= 400
}

/// True when `code` is a possible reply to `cmd`: every negative code is (see
/// `command::Verb::fits` for the positive ones).
fn fits(cmd: &Command, code: u16) -> bool {
    negative(code) || cmd.verb().fits(code)
}

/// True when each reply fits the command at its place.
pub fn in_order(cmds: &[Command], replies: &[Reply]) -> bool {
    cmds.len() == replies.len() && cmds.iter().zip(replies).all(|(c, r)| fits(c, r.code))
}

/// Replies of a batch matched to their commands.
#[derive(Debug)]
pub struct Assigned {
    /// One reply per command, in command order.
    pub replies: Vec<Reply>,
    /// Commands whose (negative) reply could as well be another's: redo them alone
    /// to learn their real reason.
    pub unsure: Vec<usize>,
}

/// Matches replies that came out of order to their commands: each positive reply to
/// the first unmatched command it fits, negative replies to the remaining commands in
/// order. `None` when a positive reply fits no command left (the connection is out
/// of step beyond repair).
pub fn assign(cmds: &[Command], replies: Vec<Reply>) -> Option<Assigned> {
    if cmds.len() != replies.len() {
        return None;
    }
    let mut slots: Vec<Option<Reply>> = vec![None; cmds.len()];
    let mut negatives = Vec::new();
    for r in replies {
        if negative(r.code) {
            negatives.push(r);
            continue;
        }
        let j = (0..cmds.len()).find(|&j| slots[j].is_none() && fits(&cmds[j], r.code))?;
        slots[j] = Some(r);
    }
    let open: Vec<usize> = (0..cmds.len()).filter(|&j| slots[j].is_none()).collect();
    let unsure = if negatives.len() > 1 {
        open.clone()
    } else {
        Vec::new()
    };
    for (j, r) in open.into_iter().zip(negatives) {
        slots[j] = Some(r);
    }
    let replies = slots.into_iter().collect::<Option<Vec<Reply>>>()?;
    Some(Assigned { replies, unsure })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16) -> Reply {
        Reply {
            code,
            lines: vec![format!("text {code}")],
        }
    }

    fn mkd() -> Command {
        Command::mkd("/p")
    }
    fn rename_and_epsv() -> Vec<Command> {
        vec![Command::rnfr("/a"), Command::rnto("/b"), Command::epsv()]
    }

    #[test]
    fn replies_in_order_are_recognised() {
        let c = vec![mkd(), Command::epsv()];
        assert!(in_order(&c, &[r(257), r(229)]));
        assert!(in_order(&c, &[r(550), r(229)]));
        assert!(in_order(&c, &[r(550), r(500)]));
        assert!(!in_order(&c, &[r(229), r(257)]));
        assert!(!in_order(&c, &[r(229)]));
        let c = rename_and_epsv();
        assert!(in_order(&c, &[r(350), r(250), r(229)]));
        assert!(!in_order(&c, &[r(350), r(229), r(250)]));
    }

    #[test]
    fn late_positive_reply_goes_to_its_command() {
        let c = vec![mkd(), Command::epsv()];
        let a = assign(&c, vec![r(229), r(257)]).unwrap();
        assert_eq!(a.replies[0].code, 257);
        assert_eq!(a.replies[1].code, 229);
        assert!(a.unsure.is_empty());

        let c = rename_and_epsv();
        let a = assign(&c, vec![r(350), r(229), r(250)]).unwrap();
        let codes: Vec<u16> = a.replies.iter().map(|r| r.code).collect();
        assert_eq!(codes, [350, 250, 229]);
        assert!(a.unsure.is_empty());
    }

    #[test]
    fn one_error_among_positives_is_placed_surely() {
        let c = vec![Command::dele("/f"), Command::epsv()];
        let a = assign(&c, vec![r(229), r(550)]).unwrap();
        assert_eq!(a.replies[0].code, 550);
        assert_eq!(a.replies[1].code, 229);
        assert!(a.unsure.is_empty());
    }

    #[test]
    fn several_errors_leave_their_commands_unsure() {
        let c = rename_and_epsv();
        let a = assign(&c, vec![r(229), r(550), r(503)]).unwrap();
        assert_eq!(a.replies[2].code, 229);
        assert_eq!(a.unsure, vec![0, 1]);
    }

    #[test]
    fn replies_that_fit_nothing_are_refused() {
        let c = vec![mkd(), Command::epsv()];
        assert!(assign(&c, vec![r(229), r(229)]).is_none());
        assert!(assign(&c, vec![r(150), r(229)]).is_none());
        assert!(assign(&c, vec![r(257)]).is_none());
    }

    #[test]
    fn reordering_is_remembered() {
        let t = ServerTraits::default();
        assert!(t.pipelining());
        t.note_reordering("test");
        t.note_reordering("test again");
        assert!(!t.pipelining());
    }
}
