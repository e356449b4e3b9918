//! The FTP-over-TLS client. Knows nothing of FUSE.

pub mod command;
pub mod entry;
pub mod features;
pub mod listing;
pub(crate) mod netio;
pub(crate) mod probe;
pub mod reply;
pub mod session;
pub mod tls;

pub use entry::{EntryKind, RemoteEntry};
pub use session::{ConnectOptions, DataStats, Download, FtpConnection, Protection, Secret, Upload};
pub use tls::{TlsConfig, TlsContext, TlsVersion};
