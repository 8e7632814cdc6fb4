//! The read models: the `neulbi-projections` crate, re-exported so the node names it
//! `crate::projections`.

pub use neulbi_projections::*;
