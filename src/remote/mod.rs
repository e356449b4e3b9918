//! The remote store over FTPS: a pool of control connections and the
//! `RemoteStore` implementation (src/fs/store.rs) on top of it.

pub(crate) mod ftp_store;
pub mod pool;
