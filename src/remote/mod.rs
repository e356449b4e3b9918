//! The remote store over FTPS: a pool of control connections and the
//! [`crate::fs::store::RemoteStore`] implementation on top of it.

pub mod ftp_store;
pub mod pool;
