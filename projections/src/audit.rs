//! The audit trail: for every event, who did it, when, in which stream, and from which
//! request (correlation id) and trace. Only ids, types and, for security events, a detail
//! made of method, role and key names: no personal data.

use super::db::Dialect;
use super::rows::{AnyQuery, insert_rows};
use super::{Decoded, Names, Projected, ProjectionError, Projector, ProjectorDef, micros};
use async_trait::async_trait;
use neulbi_domain::user::UserEvent;
use neulbi_store::RecordedEvent;
use sqlx::AnyConnection;
use std::sync::Arc;

/// The `audit` projector.
pub static DEF: ProjectorDef = ProjectorDef {
    name: "audit",
    description: "audit trail (who did what, when, from which request)",
    version: 2,
    schema: include_str!("../../migrations/read_models/audit.sql"),
    bind,
    rebuild_indexes: None,
};

struct Audit {
    /// The insert up to `VALUES ` (rows are added by [`insert_rows`]).
    into: String,
    dialect: Dialect,
}

/// The audit row's columns, in the order [`row`] binds them.
const COLUMNS: &str = "position, stream, version, event_type, actor_id, correlation_id, traceparent, recorded_at, detail";

/// Replaying a batch after a crash between its rows and its checkpoint writes nothing twice.
const ON_CONFLICT: &str = " ON CONFLICT (position) DO NOTHING";

fn bind(n: &Names) -> Arc<dyn Projector> {
    Arc::new(Audit {
        into: format!("INSERT INTO {} ({COLUMNS}) VALUES ", n.table("rm_audit")),
        dialect: n.dialect(),
    })
}

impl Audit {
    /// One row per event, in multi-row statements.
    async fn write(
        &self,
        tx: &mut AnyConnection,
        rows: &[(&RecordedEvent, &Decoded)],
    ) -> Result<(), ProjectionError> {
        insert_rows(
            tx,
            self.dialect,
            &self.into,
            9,
            ON_CONFLICT,
            rows,
            |query, (e, d)| row(query, e, d),
        )
        .await
    }
}

/// One audit row, bound in [`COLUMNS`] order.
fn row<'q>(query: AnyQuery<'q>, e: &RecordedEvent, decoded: &Decoded) -> AnyQuery<'q> {
    query
        .bind(i64::try_from(e.position).unwrap_or(i64::MAX))
        .bind(e.stream.to_string())
        .bind(i64::try_from(e.version).unwrap_or(i64::MAX))
        .bind(e.event_type.clone())
        .bind(e.metadata.user_id.map(|u| u.to_string()))
        .bind(e.metadata.correlation_id.map(|u| u.to_string()))
        .bind(e.metadata.traceparent.clone())
        .bind(micros(e.recorded_at))
        .bind(detail(decoded))
}

#[async_trait]
impl Projector for Audit {
    async fn apply(
        &self,
        tx: &mut AnyConnection,
        e: &RecordedEvent,
        decoded: &Decoded,
    ) -> Result<(), ProjectionError> {
        self.write(tx, &[(e, decoded)]).await
    }

    /// Every event gets a row: a batch is written with a few multi-row statements rather
    /// than one statement (one round trip) per event.
    async fn apply_batch(
        &self,
        tx: &mut AnyConnection,
        events: &[Projected],
    ) -> Result<(), ProjectionError> {
        let rows: Vec<_> = events.iter().map(|p| (&p.event, &p.decoded)).collect();
        self.write(tx, &rows).await
    }
}

/// What an operator reading the security audit needs beyond the event type: how someone
/// signed in or failed to, which role, which keys. Never a personal value.
fn detail(decoded: &Decoded) -> Option<String> {
    match decoded {
        Decoded::User(UserEvent::LoggedIn { provider, .. }) => Some(format!("provider={provider}")),
        Decoded::User(UserEvent::SignInFailed { method, .. }) => Some(format!("method={method}")),
        Decoded::User(UserEvent::RoleGranted { role, .. }) => Some(format!(
            "role={}",
            serde_json::to_value(role).ok()?.as_str()?
        )),
        Decoded::System(event) => Some(event.summary()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use neulbi_domain::Role;
    use neulbi_domain::system::{KeyKind, SystemEvent};

    #[test]
    fn details_name_methods_roles_and_keys_but_no_person() {
        let at = chrono::Utc.timestamp_opt(0, 0).single().expect("a time");
        let role = Decoded::User(UserEvent::RoleGranted {
            role: Role::Counselor,
            at,
        });
        assert_eq!(detail(&role).as_deref(), Some("role=counselor"));
        let failed = Decoded::User(UserEvent::SignInFailed {
            method: "password".into(),
            at,
        });
        assert_eq!(detail(&failed).as_deref(), Some("method=password"));
        let rotated = Decoded::System(SystemEvent::KeysRotated {
            what: KeyKind::Signing,
            from: vec!["k1".into()],
            to: "k2".into(),
            rows: 1,
            at,
        });
        assert_eq!(
            detail(&rotated).as_deref(),
            Some("signing k1 -> k2 (1 rows)")
        );
        assert_eq!(detail(&Decoded::Unknown), None);
    }
}
