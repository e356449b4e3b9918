//! The `ftpsfs` command: `ftpsfs URL MOUNTPOINT [-o opts]`, `ftpsfs check URL
//! [-o opts]` and `ftpsfs completions SHELL` (see `ftpsfs::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    // Transfer buffers (up to 1 MiB) come and go on many threads: a fixed mmap
    // threshold returns them to the system at once instead of letting glibc's
    // per-thread arenas keep them, which bounds the resident size.
    // SAFETY: mallopt before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
    let args: Vec<String> = std::env::args().collect();
    let sub = |name: &str| {
        let mut rest = vec![format!("ftpsfs {name}")];
        rest.extend(args.iter().skip(2).cloned());
        rest
    };
    match args.get(1).map(String::as_str) {
        Some("check") => ftpsfs::cli::run_check(sub("check")),
        Some("completions") => ftpsfs::cli::run_completions(sub("completions")),
        _ => ftpsfs::cli::run_mount(args),
    }
}
