//! The README's Library program, as written there (see `build.rs`).

include!(concat!(env!("OUT_DIR"), "/library.rs"));
