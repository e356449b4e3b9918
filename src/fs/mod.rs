//! The filesystem: logic over a [`store::RemoteStore`], and the fuser adapter.

pub mod dircache;
pub mod dirstream;
pub mod entries;
#[cfg(test)]
pub mod faultstore;
pub mod filesystem;
pub mod fuse_adapter;
pub mod inodes;
pub mod journal;
pub mod listing_prefetcher;
pub mod memstore;
pub mod open_file;
pub mod prefetcher;
pub mod segments;
pub mod spool;
pub mod store;
pub mod uploader;
