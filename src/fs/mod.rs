//! The filesystem: logic over a [`store::RemoteStore`], and the fuser adapter.

pub mod attr;
pub mod config;
pub mod dircache;
pub mod dirstream;
pub mod entries;
pub mod error;
#[cfg(test)]
pub mod faultstore;
pub mod filesystem;
pub mod fuse_adapter;
pub mod inodes;
pub mod journal;
pub mod listing_prefetcher;
#[cfg(test)]
pub mod memstore;
pub mod open_file;
pub mod prefetcher;
pub mod segments;
pub mod spool;
pub mod store;
pub mod uploader;
