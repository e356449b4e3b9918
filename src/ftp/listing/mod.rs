//! Parsers for directory listings: MLSD/MLST facts (RFC 3659) and LIST output
//! (Unix `ls -l` and DOS/IIS styles). Every line is untrusted input.

pub mod list;
pub mod mlsd;
pub mod reader;
pub mod timeconv;
