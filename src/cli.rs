//! Command-line glue shared by `check` and the mount.

use crate::config::{OptionList, CONNECTION_OPTIONS};
use crate::error::{FtpError, Result};
use std::process::ExitCode;

/// Refuses options that neither the connection nor `extra` know, so a typo in
/// `fingerprint=` never silently weakens trust.
pub fn reject_unknown(opts: &OptionList, extra: &[&str]) -> Result<()> {
    for name in opts.names() {
        if !CONNECTION_OPTIONS.contains(&name) && !extra.contains(&name) {
            return Err(FtpError::Invalid(format!("unknown option {name:?}")));
        }
    }
    Ok(())
}

/// `ftpsfs URL MOUNTPOINT [-o opts]`.
pub fn run_mount(_args: Vec<String>) -> ExitCode {
    eprintln!("ftpsfs: mounting is not built yet; use `ftpsfs check URL`");
    ExitCode::from(2)
}
