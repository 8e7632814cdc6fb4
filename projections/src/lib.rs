//! Projectors and read models of Neulbi.
//!
//! A projector is a named function from committed events to changes on its read model. The
//! runtime that feeds projectors from `subscribe_all` and keeps their checkpoints lives in the
//! root crate's store layer; this crate holds what is independent of the database driver.

/// The name under which a projector's checkpoint is stored. Names are stable: renaming one
/// means a rebuild from position 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProjectorName(pub &'static str);
