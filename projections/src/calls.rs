//! Call history: who called whom, when it started, how long it lasted, how it ended.

use super::db::{Sql, sql};
use super::{Decoded, Names, ProjectionError, Projector, ProjectorDef, micros};
use async_trait::async_trait;
use neulbi_domain::call_session::CallEvent;
use neulbi_store::RecordedEvent;
use sqlx::AnyConnection;
use std::sync::Arc;

/// The `calls` projector.
pub static DEF: ProjectorDef = ProjectorDef {
    name: "calls",
    description: "call history (participants, start, duration)",
    version: 1,
    schema: include_str!("../../migrations/read_models/calls.sql"),
    bind,
    rebuild_indexes: None,
};

struct Calls {
    requested: Sql,
    status: Sql,
    accepted: Sql,
    joined: Sql,
    started: Sql,
    ended: Sql,
}

fn bind(n: &Names) -> Arc<dyn Projector> {
    let t = &["rm_calls", "rm_call_participants"];
    Arc::new(Calls {
        requested: n.render(
            "INSERT INTO {rm_calls} (call_id, room_id, requested_by, invitee, status, requested_at) \
             VALUES ($1, $2, $3, $4, 'requested', $5) ON CONFLICT (call_id) DO NOTHING",
            t,
        ),
        status: n.render("UPDATE {rm_calls} SET status = $1 WHERE call_id = $2", t),
        accepted: n.render("UPDATE {rm_calls} SET status = 'accepted', accepted_at = $1 WHERE call_id = $2", t),
        joined: n.render(
            "INSERT INTO {rm_call_participants} (call_id, user_id, first_joined_at) VALUES ($1, $2, $3) \
             ON CONFLICT (call_id, user_id) DO NOTHING",
            t,
        ),
        started: n.render(
            "UPDATE {rm_calls} SET status = 'in_progress', started_at = COALESCE(started_at, $1) WHERE call_id = $2",
            t,
        ),
        ended: n.render(
            "UPDATE {rm_calls} SET status = 'ended', ended_at = $1, duration_secs = $2, end_reason = $3 WHERE call_id = $4",
            t,
        ),
    })
}

#[async_trait]
impl Projector for Calls {
    async fn apply(
        &self,
        tx: &mut AnyConnection,
        e: &RecordedEvent,
        decoded: &Decoded,
    ) -> Result<(), ProjectionError> {
        let Decoded::Call(event) = decoded else {
            return Ok(());
        };
        let call = e.stream.id().to_string();
        match event {
            CallEvent::Requested {
                room_id,
                requested_by,
                invitees,
                at,
                ..
            } => {
                // The history keeps the first invitee: a two-party call's other person.
                let Some(invitee) = invitees.first() else {
                    return Ok(());
                };
                sqlx::query(sql(&self.requested))
                    .bind(&call)
                    .bind(room_id.to_string())
                    .bind(requested_by.to_string())
                    .bind(invitee.to_string())
                    .bind(micros(*at))
                    .execute(&mut *tx)
                    .await?;
            }
            CallEvent::Accepted { at, .. } => {
                sqlx::query(sql(&self.accepted))
                    .bind(micros(*at))
                    .bind(&call)
                    .execute(&mut *tx)
                    .await?;
            }
            CallEvent::Declined { .. } => {
                sqlx::query(sql(&self.status))
                    .bind("declined")
                    .bind(&call)
                    .execute(&mut *tx)
                    .await?;
            }
            CallEvent::ParticipantJoined { user_id, at } => {
                sqlx::query(sql(&self.joined))
                    .bind(&call)
                    .bind(user_id.to_string())
                    .bind(micros(*at))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql(&self.started))
                    .bind(micros(*at))
                    .bind(&call)
                    .execute(&mut *tx)
                    .await?;
            }
            CallEvent::ParticipantLeft { .. }
            | CallEvent::ParticipantDropped { .. }
            | CallEvent::ParticipantRejoined { .. }
            | CallEvent::MediaNodeAssigned { .. }
            | CallEvent::MediaStateChanged { .. }
            | CallEvent::MediaStalled { .. }
            | CallEvent::MediaResumed { .. }
            | CallEvent::InCallMessagePosted { .. }
            | CallEvent::EmojiSent { .. } => {}
            CallEvent::Ended {
                reason,
                duration_secs,
                at,
            } => {
                sqlx::query(sql(&self.ended))
                    .bind(micros(*at))
                    .bind(i64::try_from(*duration_secs).unwrap_or(i64::MAX))
                    .bind(reason.clone())
                    .bind(&call)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }
}
