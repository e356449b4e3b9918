//! A directory's entries, compact: fixed-size slots in the server's order, every
//! name in one shared text arena, and a sorted index of positions (4 bytes an
//! entry) for lookups by name.
//!
//! Design: a listing of a million entries must fit in a bounded, small amount of
//! memory (the kernel makes an inode for each of them too). A [`RemoteEntry`] is
//! 80 bytes plus a heap block for its name; a slot here is 32 bytes, with the name
//! (and a symlink's target) appended to the arena, so an entry costs about 36 bytes
//! plus its name. Entries are handed out as owned [`RemoteEntry`] values, built on
//! demand. A listing is shared through an `Arc` by the cache and by every open
//! directory handle reading it (a handle's offsets are positions in the slots),
//! and copied only when the mount edits a listing someone is still reading
//! (`Arc::make_mut`). Lookups are binary searches; an edit costs a move of the
//! index's tail, fine for the mount's own creates and deletes. Text left behind by
//! removals is reclaimed when it outweighs the live text.
//!
//! A listing streaming in ([`Entries::push`]) has its index built once complete
//! ([`Entries::seal`]); until then only positions are read.

use crate::ftp::{EntryKind, RemoteEntry};
use std::time::{Duration, SystemTime};

/// `mode` of a slot without one (real modes are at most 0o7777).
const NO_MODE: u16 = u16::MAX;
/// `secs` of a slot without a time.
const NO_TIME: i64 = i64::MIN;

#[derive(Debug, Clone, Copy)]
struct Slot {
    size: u64,
    /// Seconds from the epoch (negative before it), or [`NO_TIME`].
    secs: i64,
    nanos: u32,
    /// Where the name starts in the arena; a symlink's target follows it.
    at: u32,
    name_len: u16,
    target_len: u16,
    mode: u16,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// A symlink; `target_len` bytes of target follow the name when `true`.
    Symlink(bool),
}

#[derive(Debug, Clone, Default)]
pub struct Entries {
    /// In the server's order (new entries at the end).
    slots: Vec<Slot>,
    /// Every name (and symlink target), one after the other.
    text: String,
    /// Bytes of `text` no slot uses any more.
    garbage: usize,
    /// Positions in `slots`, sorted by name.
    by_name: Vec<u32>,
    /// How many of the entries are directories (a directory's link count).
    dirs: u32,
    /// `by_name` indexes every slot (false while a listing streams in).
    sealed: bool,
}

fn time_parts(t: Option<SystemTime>) -> (i64, u32) {
    match t.map(|t| t.duration_since(SystemTime::UNIX_EPOCH)) {
        None => (NO_TIME, 0),
        Some(Ok(d)) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Some(Err(e)) => {
            // Before 1970: whole seconds back, then nanoseconds forward.
            let d = e.duration();
            let mut secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX - 1);
            let mut nanos = d.subsec_nanos();
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (secs, nanos)
        }
    }
}

fn time_of(secs: i64, nanos: u32) -> Option<SystemTime> {
    if secs == NO_TIME {
        return None;
    }
    let base = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    base.and_then(|b| b.checked_add(Duration::from_nanos(u64::from(nanos))))
}

impl Entries {
    /// The entries of `items`, keeping the first of names listed twice.
    pub fn from_vec(items: Vec<RemoteEntry>) -> Self {
        let mut l = Entries::default();
        l.slots.reserve_exact(items.len());
        for e in items {
            l.push(e);
        }
        l.seal();
        l
    }

    /// Appends an entry of a listing streaming in (see [`Entries::seal`]).
    pub fn push(&mut self, e: RemoteEntry) {
        self.push_slot(&e);
        self.sealed = false;
    }

    fn push_slot(&mut self, e: &RemoteEntry) {
        let slot = self.slot_of(e);
        self.dirs += u32::from(slot.kind == Kind::Dir);
        self.slots.push(slot);
    }

    /// The listing is complete: builds the index by name, dropping later entries
    /// whose name came before (a broken server listed it twice), and frees spare
    /// capacity.
    pub fn seal(&mut self) {
        if self.sealed {
            return;
        }
        let mut by_name: Vec<u32> = (0..self.slots.len() as u32).collect();
        by_name.sort_by(|&a, &b| self.name(a).cmp(self.name(b)).then(a.cmp(&b)));
        let twice = by_name
            .windows(2)
            .any(|w| self.name(w[0]) == self.name(w[1]));
        if twice {
            let mut keep = vec![true; self.slots.len()];
            for w in by_name.windows(2) {
                if self.name(w[0]) == self.name(w[1]) {
                    keep[w[1] as usize] = false;
                }
            }
            let mut i = 0;
            let mut dropped = Vec::new();
            self.slots.retain(|s| {
                i += 1;
                if !keep[i - 1] {
                    dropped.push(*s);
                }
                keep[i - 1]
            });
            for s in dropped {
                self.forget_slot(&s);
            }
            return self.seal();
        }
        self.slots.shrink_to_fit();
        self.text.shrink_to_fit();
        self.by_name = by_name;
        self.sealed = true;
    }

    fn slot_of(&mut self, e: &RemoteEntry) -> Slot {
        let (secs, nanos) = time_parts(e.mtime);
        let at = self.text.len() as u32;
        // Names are at most 255 bytes as sent (1,020 as carried, see crate::names);
        // a longer one is cut rather than wrapping the length.
        let name = clip(&e.name, u16::MAX as usize);
        self.text.push_str(name);
        let (kind, target_len) = match &e.kind {
            EntryKind::File => (Kind::File, 0),
            EntryKind::Dir => (Kind::Dir, 0),
            EntryKind::Symlink(None) => (Kind::Symlink(false), 0),
            EntryKind::Symlink(Some(t)) => {
                let t = clip(t, u16::MAX as usize);
                self.text.push_str(t);
                (Kind::Symlink(true), t.len() as u16)
            }
        };
        Slot {
            size: e.size,
            secs,
            nanos,
            at,
            name_len: name.len() as u16,
            target_len,
            mode: e.mode.map_or(NO_MODE, |m| (m & 0o7777) as u16),
            kind,
        }
    }

    /// Counts a slot's text as garbage (and its directory no more).
    fn forget_slot(&mut self, s: &Slot) {
        self.garbage += usize::from(s.name_len) + usize::from(s.target_len);
        self.dirs -= u32::from(s.kind == Kind::Dir);
    }

    fn slot_name(&self, s: &Slot) -> &str {
        let at = s.at as usize;
        self.text
            .get(at..at + usize::from(s.name_len))
            .unwrap_or("")
    }

    fn name(&self, i: u32) -> &str {
        self.slots.get(i as usize).map_or("", |s| self.slot_name(s))
    }

    fn entry(&self, s: &Slot) -> RemoteEntry {
        let kind = match s.kind {
            Kind::File => EntryKind::File,
            Kind::Dir => EntryKind::Dir,
            Kind::Symlink(false) => EntryKind::Symlink(None),
            Kind::Symlink(true) => {
                let at = s.at as usize + usize::from(s.name_len);
                let t = self.text.get(at..at + usize::from(s.target_len));
                EntryKind::Symlink(t.map(str::to_string))
            }
        };
        RemoteEntry {
            name: self.slot_name(s).to_string(),
            kind,
            size: s.size,
            mtime: time_of(s.secs, s.nanos),
            mode: (s.mode != NO_MODE).then_some(u32::from(s.mode)),
        }
    }

    /// Where `name` is (Ok) or would go (Err) in `by_name`.
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.by_name.binary_search_by(|&i| self.name(i).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<RemoteEntry> {
        let at = self.find(name).ok()?;
        self.slots
            .get(self.by_name[at] as usize)
            .map(|s| self.entry(s))
    }

    /// Changes the entry named `name` with `f` (its name must stay).
    pub fn update(&mut self, name: &str, f: impl FnOnce(&mut RemoteEntry)) {
        let Ok(at) = self.find(name) else {
            return;
        };
        let i = self.by_name[at] as usize;
        let Some(old) = self.slots.get(i).copied() else {
            return;
        };
        let mut e = self.entry(&old);
        f(&mut e);
        e.name = name.to_string();
        self.replace(i, &old, &e);
    }

    /// Puts `e` in slot `i` (which holds `old`, of the same name).
    fn replace(&mut self, i: usize, old: &Slot, e: &RemoteEntry) {
        let same_text = matches!(
            (&old.kind, &e.kind),
            (
                Kind::File | Kind::Dir | Kind::Symlink(false),
                EntryKind::File | EntryKind::Dir | EntryKind::Symlink(None)
            )
        );
        let mut slot = if same_text {
            // The name stays where it is.
            let (secs, nanos) = time_parts(e.mtime);
            Slot {
                size: e.size,
                secs,
                nanos,
                mode: e.mode.map_or(NO_MODE, |m| (m & 0o7777) as u16),
                kind: match e.kind {
                    EntryKind::Dir => Kind::Dir,
                    EntryKind::Symlink(_) => Kind::Symlink(false),
                    EntryKind::File => Kind::File,
                },
                ..*old
            }
        } else {
            self.garbage += usize::from(old.name_len) + usize::from(old.target_len);
            self.slot_of(e)
        };
        self.dirs =
            self.dirs - u32::from(old.kind == Kind::Dir) + u32::from(slot.kind == Kind::Dir);
        std::mem::swap(&mut self.slots[i], &mut slot);
        self.compact_if_wasteful();
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Adds or replaces the entry named `name` (its `name` field is set to it).
    pub fn insert(&mut self, name: String, mut e: RemoteEntry) -> Option<RemoteEntry> {
        e.name = name;
        match self.find(&e.name) {
            Ok(at) => {
                let i = self.by_name[at] as usize;
                let old = self.slots[i];
                let before = self.entry(&old);
                self.replace(i, &old, &e);
                Some(before)
            }
            Err(at) => {
                self.by_name.insert(at, self.slots.len() as u32);
                self.push_slot(&e);
                None
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<RemoteEntry> {
        let at = self.find(name).ok()?;
        let i = self.by_name.remove(at);
        for p in &mut self.by_name {
            if *p > i {
                *p -= 1;
            }
        }
        let old = self.slots.remove(i as usize);
        let e = self.entry(&old);
        self.forget_slot(&old);
        self.compact_if_wasteful();
        Some(e)
    }

    /// Rewrites the arena when removed text outweighs the live text.
    fn compact_if_wasteful(&mut self) {
        if self.garbage < 4096 || self.garbage < self.text.len() / 2 {
            return;
        }
        let mut text = String::with_capacity(self.text.len() - self.garbage);
        for s in &mut self.slots {
            let at = s.at as usize;
            let len = usize::from(s.name_len) + usize::from(s.target_len);
            let new_at = text.len() as u32;
            text.push_str(self.text.get(at..at + len).unwrap_or(""));
            s.at = new_at;
        }
        self.text = text;
        self.garbage = 0;
    }

    /// The entries in the server's order.
    #[cfg(test)]
    pub fn values(&self) -> impl Iterator<Item = RemoteEntry> + '_ {
        self.slots.iter().map(|s| self.entry(s))
    }

    /// The entry at position `i` of the server's order.
    pub fn at(&self, i: usize) -> Option<RemoteEntry> {
        self.slots.get(i).map(|s| self.entry(s))
    }

    /// The name and kind at position `i` (no copy of the rest).
    pub fn kind_at(&self, i: usize) -> Option<(&str, EntryKind)> {
        let s = self.slots.get(i)?;
        let kind = match s.kind {
            Kind::Dir => EntryKind::Dir,
            Kind::File => EntryKind::File,
            Kind::Symlink(_) => EntryKind::Symlink(None),
        };
        Some((self.slot_name(s), kind))
    }

    /// The time of the entry at position `i`.
    pub fn mtime_at(&self, i: usize) -> Option<SystemTime> {
        self.slots.get(i).and_then(|s| time_of(s.secs, s.nanos))
    }

    /// Sets the time of the entry at position `i`.
    pub fn set_mtime_at(&mut self, i: usize, t: Option<SystemTime>) {
        if let Some(s) = self.slots.get_mut(i) {
            (s.secs, s.nanos) = time_parts(t);
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// How many entries are directories.
    pub fn dirs(&self) -> u32 {
        self.dirs
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str) -> RemoteEntry {
        RemoteEntry::test_file(name)
    }

    #[test]
    fn lookups_edits_and_duplicates() {
        let mut l = Entries::from_vec(vec![e("b"), e("a"), e("c"), e("a")]);
        assert_eq!(l.len(), 3, "the second 'a' is dropped");
        let order: Vec<String> = l.values().map(|x| x.name).collect();
        assert_eq!(order, ["b", "a", "c"], "the server's order");
        assert!(l.contains_key("a") && l.get("c").is_some() && l.get("z").is_none());
        l.insert("0".into(), e("ignored"));
        assert_eq!(l.get("0").map(|x| x.name), Some("0".to_string()));
        assert_eq!(l.at(3).map(|x| x.name).as_deref(), Some("0"));
        assert!(l.remove("b").is_some());
        assert!(l.remove("b").is_none());
        assert_eq!(l.get("a").map(|x| x.name).as_deref(), Some("a"));
        assert_eq!(l.get("c").map(|x| x.name).as_deref(), Some("c"));
        assert_eq!(l.get("0").map(|x| x.name).as_deref(), Some("0"));
        l.update("c", |x| x.size = 42);
        assert_eq!(l.get("c").map(|x| x.size), Some(42));
        let order: Vec<String> = l.values().map(|x| x.name).collect();
        assert_eq!(order, ["a", "c", "0"]);
    }

    #[test]
    fn counts_directories_through_every_edit() {
        let dir = |n: &str| RemoteEntry {
            kind: EntryKind::Dir,
            ..e(n)
        };
        let mut l = Entries::from_vec(vec![dir("d1"), e("f"), dir("d2"), dir("d1")]);
        assert_eq!(l.dirs(), 2, "the duplicate d1 is dropped");
        l.insert("d3".into(), dir("x"));
        assert_eq!(l.dirs(), 3);
        l.insert("d3".into(), e("x"));
        assert_eq!(l.dirs(), 2, "d3 replaced by a file");
        l.update("f", |x| x.kind = EntryKind::Dir);
        assert_eq!(l.dirs(), 3);
        l.remove("d1");
        l.remove("f");
        l.remove("nothing");
        assert_eq!(l.dirs(), 1);
    }

    fn arb_entry() -> impl proptest::strategy::Strategy<Value = RemoteEntry> {
        use proptest::prelude::*;
        (
            "[a-e]{1,3}",
            0u8..4,
            any::<u64>(),
            proptest::option::of(-3_000_000_000i64..5_000_000_000i64),
            0u32..1_000_000_000,
            proptest::option::of(0u32..0o7777),
        )
            .prop_map(|(name, k, size, secs, nanos, mode)| RemoteEntry {
                name,
                kind: match k {
                    0 => EntryKind::File,
                    1 => EntryKind::Dir,
                    2 => EntryKind::Symlink(None),
                    _ => EntryKind::Symlink(Some("../t\u{e9}".into())),
                },
                size,
                mtime: secs.and_then(|s| time_of(s, nanos)),
                mode,
            })
    }

    proptest::proptest! {
        /// Against a map as the reference: every edit, every lookup, the count
        /// of directories, and the order of first appearance.
        #[test]
        fn behaves_like_a_map(
            initial in proptest::collection::vec(arb_entry(), 0..30),
            ops in proptest::collection::vec((0u8..3, arb_entry()), 0..60),
        ) {
            use std::collections::BTreeMap;
            let mut model: BTreeMap<String, RemoteEntry> = BTreeMap::new();
            let mut order: Vec<String> = Vec::new();
            for e in &initial {
                if !model.contains_key(&e.name) {
                    model.insert(e.name.clone(), e.clone());
                    order.push(e.name.clone());
                }
            }
            let mut l = Entries::from_vec(initial);
            for (op, e) in ops {
                match op {
                    0 => {
                        let was = model.insert(e.name.clone(), e.clone());
                        if was.is_none() {
                            order.push(e.name.clone());
                        }
                        proptest::prop_assert_eq!(l.insert(e.name.clone(), e.clone()), was);
                    }
                    1 => {
                        order.retain(|n| n != &e.name);
                        proptest::prop_assert_eq!(l.remove(&e.name), model.remove(&e.name));
                    }
                    _ => {
                        let change = |x: &mut RemoteEntry| {
                            x.size = e.size;
                            x.mtime = e.mtime;
                            x.mode = e.mode;
                            x.kind = e.kind.clone();
                        };
                        if let Some(m) = model.get_mut(&e.name) {
                            change(m);
                        }
                        l.update(&e.name, change);
                    }
                }
                for (name, want) in &model {
                    proptest::prop_assert_eq!(l.get(name), Some(want.clone()));
                }
                let dirs = model.values().filter(|x| x.kind == EntryKind::Dir).count();
                proptest::prop_assert_eq!(l.dirs() as usize, dirs);
                let names: Vec<String> = l.values().map(|x| x.name).collect();
                proptest::prop_assert_eq!(&names, &order);
            }
        }
    }

    #[test]
    fn times_before_1970_and_with_nanoseconds_survive() {
        for t in [
            SystemTime::UNIX_EPOCH - Duration::new(5, 250),
            SystemTime::UNIX_EPOCH + Duration::new(1_796_127_261, 999_999_999),
            SystemTime::UNIX_EPOCH,
        ] {
            let (s, n) = time_parts(Some(t));
            assert_eq!(time_of(s, n), Some(t));
        }
        assert_eq!(time_of(NO_TIME, 0), None);
    }
}
