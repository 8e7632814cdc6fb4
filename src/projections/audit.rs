//! The audit trail: for every event, who did it, when, in which stream, and from which
//! request (correlation id) and trace. Only ids and types: no personal data.

use super::db::{Sql, sql};
use super::{Decoded, IndexDef, Names, ProjectionError, Projector, ProjectorDef, micros};
use crate::store::RecordedEvent;
use async_trait::async_trait;
use sqlx::AnyConnection;
use std::sync::Arc;

/// The `audit` projector.
pub static DEF: ProjectorDef = ProjectorDef {
    name: "audit",
    description: "audit trail (who did what, when, from which request)",
    version: 1,
    tables: &[(
        "rm_audit",
        "CREATE TABLE IF NOT EXISTS {rm_audit} (position {bigint} PRIMARY KEY, stream TEXT NOT NULL, version {bigint} NOT NULL, \
         event_type TEXT NOT NULL, actor_id TEXT, correlation_id TEXT, traceparent TEXT, recorded_at {bigint} NOT NULL)",
    )],
    indexes: &[
        IndexDef {
            name: "rm_audit_by_stream",
            table: "rm_audit",
            columns: "stream, version",
        },
        IndexDef {
            name: "rm_audit_by_actor",
            table: "rm_audit",
            columns: "actor_id",
        },
    ],
    bind,
};

struct Audit {
    insert: Sql,
}

fn bind(n: &Names) -> Arc<dyn Projector> {
    Arc::new(Audit {
        insert: n.render(
            "INSERT INTO {rm_audit} (position, stream, version, event_type, actor_id, correlation_id, traceparent, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (position) DO NOTHING",
            &["rm_audit"],
        ),
    })
}

#[async_trait]
impl Projector for Audit {
    async fn apply(
        &self,
        tx: &mut AnyConnection,
        e: &RecordedEvent,
        _: &Decoded,
    ) -> Result<(), ProjectionError> {
        sqlx::query(sql(&self.insert))
            .bind(i64::try_from(e.position).unwrap_or(i64::MAX))
            .bind(e.stream.to_string())
            .bind(i64::try_from(e.version).unwrap_or(i64::MAX))
            .bind(e.event_type.clone())
            .bind(e.metadata.user_id.map(|u| u.to_string()))
            .bind(e.metadata.correlation_id.map(|u| u.to_string()))
            .bind(e.metadata.traceparent.clone())
            .bind(micros(e.recorded_at))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}
