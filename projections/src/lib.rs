//! Projections: named projectors that turn committed events into read models.
//!
//! Each projector owns a few tables and a checkpoint (the next log position it will apply).
//! The checkpoint is written in the same transaction as the table changes, and a batch only
//! commits if the checkpoint still holds the value the batch started from, so every event
//! takes effect exactly once — across crashes, restarts, several nodes, and a rebuild that
//! swaps the tables underneath a running server.

pub mod audit;
pub mod calls;
pub mod db;
pub mod faults;
pub mod images;
pub mod metrics;
pub mod queries;
pub mod rebuild;
pub mod rooms;
mod rooms_batch;
mod rows;
pub mod runtime;
pub mod schema;
pub mod users;

use async_trait::async_trait;
use db::{Dialect, Sql};
use neulbi_domain::StreamKind;
use neulbi_domain::call_session::CallEvent;
use neulbi_domain::chat_room::RoomEvent;
use neulbi_domain::system::SystemEvent;
use neulbi_domain::user::UserEvent;
use neulbi_store::codec;
use neulbi_store::{RecordedEvent, StoreError};
use sqlx::AnyConnection;
use std::sync::Arc;
use thiserror::Error;

pub use db::ReadDb;

/// Why projecting failed.
#[derive(Debug, Error)]
pub enum ProjectionError {
    /// The read-model database failed.
    #[error("read-model database: {0}")]
    Database(sqlx::Error),
    /// The event log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A paging cursor that no page handed out.
    #[error("invalid cursor {0:?}")]
    InvalidCursor(String),
    /// A sealed personal value in a read model does not open under its owner's key
    /// (tampered, or copied from another row).
    #[error("sealed read-model value: {0}")]
    Sealed(#[from] neulbi_store::cipher::CipherError),
    /// Sealed values had to be read but the read models were opened without data keys
    /// ([`ReadDb::with_keys`]); treating every value as erased would be wrong (the image
    /// sweeper would delete every blob).
    #[error("read models opened without data keys; sealed values cannot be read")]
    Keyless,
    /// A schema file does not have the shape the runtime binds (a defect of this build).
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    /// No projector has that name.
    #[error("no projector named {0:?} (known: {1})")]
    Unknown(String, String),
}

impl From<sqlx::Error> for ProjectionError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

/// An event decoded once for the projectors; unknown types are skipped, not fatal, so an
/// older node keeps projecting while a newer one writes new event types.
#[derive(Debug)]
pub enum Decoded {
    /// A user-stream event.
    User(UserEvent),
    /// A room-stream event.
    Room(RoomEvent),
    /// A call-stream event.
    Call(CallEvent),
    /// A security-journal event.
    System(SystemEvent),
    /// A type this version does not know.
    Unknown,
}

impl Decoded {
    /// Decodes by the stream's kind.
    pub fn of(e: &RecordedEvent) -> Self {
        let decoded: Result<Self, codec::CodecError> = match e.stream.kind() {
            StreamKind::User => codec::decode(e).map(Self::User),
            StreamKind::Room => codec::decode(e).map(Self::Room),
            StreamKind::Call => codec::decode(e).map(Self::Call),
            StreamKind::System => codec::decode(e).map(Self::System),
        };
        decoded.unwrap_or_else(|err| {
            tracing::warn!(position = e.position, event_type = %e.event_type, error = %err, "skipping an event this version cannot decode");
            Self::Unknown
        })
    }
}

/// An event with its decoded form: decoded once, where the batch is read (a rebuild does
/// that on its read-ahead task, off the projector's path).
#[derive(Debug)]
pub struct Projected {
    /// The event as the log stores it (personal fields as sealed tokens).
    pub event: RecordedEvent,
    /// Its domain form.
    pub decoded: Decoded,
}

impl Projected {
    /// Decodes `event`.
    pub fn of(event: RecordedEvent) -> Self {
        let decoded = Decoded::of(&event);
        Self { event, decoded }
    }
}

/// One projector bound to concrete table names (live, or shadow during a rebuild).
#[async_trait]
pub trait Projector: Send + Sync {
    /// Applies one event inside the batch's transaction.
    async fn apply(
        &self,
        tx: &mut AnyConnection,
        event: &RecordedEvent,
        decoded: &Decoded,
    ) -> Result<(), ProjectionError>;

    /// Applies a batch in log order. Projectors on a hot path override this to fold the batch
    /// in memory and write it with few multi-row statements.
    async fn apply_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[Projected],
    ) -> Result<(), ProjectionError> {
        for e in events {
            self.apply(tx, &e.event, &e.decoded).await?;
        }
        Ok(())
    }

    /// Applies one batch of a rebuild. Nothing reads the shadow tables before the swap, so a
    /// projector may keep what it folded (up to `keep` entries, rooms for `rooms`) in memory
    /// past the batch's commit instead of writing and re-reading it every batch; whatever
    /// it keeps is written by [`Projector::finish_rebuild`].
    async fn rebuild_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[Projected],
        keep: usize,
    ) -> Result<(), ProjectionError> {
        let _ = keep;
        self.apply_batch(tx, events).await
    }

    /// Writes what [`Projector::rebuild_batch`] kept in memory; the rebuild calls it once,
    /// after the last batch and before the swap.
    async fn finish_rebuild(&self, tx: &mut AnyConnection) -> Result<(), ProjectionError> {
        let _ = tx;
        Ok(())
    }
}

/// The static description of a projector: its name, tables, DDL and how to bind it.
pub struct ProjectorDef {
    /// Stable name: the checkpoint key and the CLI argument.
    pub name: &'static str,
    /// What it serves, for `projections status`.
    pub description: &'static str,
    /// Bump to rebuild automatically when the tables' shape changes.
    pub version: i64,
    /// Its tables and indexes: a file of `migrations/read_models/` ([`schema`]).
    pub schema: &'static str,
    /// Binds the projector to table names (`suffix` is empty for the live tables).
    pub bind: fn(&Names) -> Arc<dyn Projector>,
    /// The indexes a rebuild needs while it applies its batches (`None`: all of them). The
    /// others are built once, at the swap, instead of kept up to date row by row; a
    /// projector that meets an event needing them mid-rebuild builds them then.
    pub rebuild_indexes: Option<&'static [&'static str]>,
}

impl ProjectorDef {
    /// The tables and indexes of [`ProjectorDef::schema`].
    pub fn schema(&self) -> Result<schema::Schema, ProjectionError> {
        Ok(schema::Schema::parse(self.schema)?)
    }
}

/// Maps base table names to the bound ones.
#[derive(Debug, Clone)]
pub struct Names {
    suffix: String,
    /// Appended to index names: `""` for tables created live, a generation of its own for
    /// each rebuild's shadow ([`Names::generation`]).
    index_suffix: String,
    dialect: Dialect,
}

/// What separates an index's name from its rebuild generation (`rm_messages_by_seq__g…`).
pub const GENERATION: &str = "__g";

impl Names {
    /// Names with `suffix` appended (`""` for live, `"__shadow"` while rebuilding), to the
    /// indexes too.
    pub fn new(suffix: &str, dialect: Dialect) -> Self {
        Self {
            suffix: suffix.to_owned(),
            index_suffix: suffix.to_owned(),
            dialect,
        }
    }

    /// A rebuild's shadow tables (`suffix`), whose indexes are named for generation `id`:
    /// a swap renames the tables and the indexes go with them under the names they were
    /// built with (SQLite cannot rename an index), so each generation's must differ from
    /// the last one's, which the live tables still carry.
    pub fn generation(suffix: &str, id: u64, dialect: Dialect) -> Self {
        Self {
            suffix: suffix.to_owned(),
            index_suffix: format!("{GENERATION}{id:x}"),
            dialect,
        }
    }

    /// What index names get appended.
    pub fn index_suffix(&self) -> &str {
        &self.index_suffix
    }

    /// Renders a statement template: every `{base}` becomes `base{suffix}`; `{blob}` and
    /// `{bigint}` become the dialect's types.
    pub fn render(&self, template: &str, bases: &[&str]) -> Sql {
        let blob = match self.dialect {
            Dialect::Sqlite => "BLOB",
            Dialect::Postgres => "BYTEA",
        };
        let mut s = template
            .replace("{bigint}", "BIGINT")
            .replace("{blob}", blob);
        for base in bases {
            s = s.replace(&format!("{{{base}}}"), &format!("{base}{}", self.suffix));
        }
        if self.dialect == Dialect::Sqlite {
            s = s.replace(" FOR UPDATE", "");
        }
        Arc::from(s)
    }

    /// The bound name of a base table.
    pub fn table(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }

    /// The dialect in use.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
}

/// Every projector, in the order `serve` starts them.
pub fn all() -> Vec<&'static ProjectorDef> {
    vec![
        &users::DEF,
        &rooms::DEF,
        &calls::DEF,
        &audit::DEF,
        &images::DEF,
    ]
}

/// Looks a projector up by name.
pub fn by_name(name: &str) -> Result<&'static ProjectorDef, ProjectionError> {
    all().into_iter().find(|d| d.name == name).ok_or_else(|| {
        ProjectionError::Unknown(
            name.to_owned(),
            all().iter().map(|d| d.name).collect::<Vec<_>>().join(", "),
        )
    })
}

/// Microseconds since the epoch, as the read models store time.
pub fn micros(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_micros()
}
