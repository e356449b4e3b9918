//! The FTP-over-TLS client. Knows nothing of FUSE.

pub mod data;
pub mod entry;
pub mod features;
pub mod listing;
pub mod netio;
pub mod probe;
pub mod reply;
pub mod session;
pub mod tls;

pub use data::{Download, Upload};
pub use entry::{EntryKind, RemoteEntry};
pub use session::{ConnectOptions, DataStats, FtpConnection, Protection, Secret};
pub use tls::{TlsConfig, TlsContext, TlsVersion};
