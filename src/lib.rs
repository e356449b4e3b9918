//! ftpsfs: mount an FTPS site as a local folder.
//!
//! Layers: [`ftp`] is the FTP-over-TLS client (no FUSE), [`config`] the user's URL and
//! options, [`check`] the diagnostics command.

pub(crate) mod check;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod error;
pub(crate) mod fs;
pub mod ftp;
pub(crate) mod mount;
pub mod names;
pub mod options;
pub mod remote;
pub(crate) mod sync;
pub(crate) mod syslog;
