//! User profiles and the counselor directory.
//!
//! Nickname, e-mail, headline and bio are stored as sealed tokens copied from the log
//! ([`neulbi_store::sealed`]); queries open them with the owner's key.

use super::db::{Sql, sql};
use super::{Decoded, Names, ProjectionError, Projector, ProjectorDef, micros};
use async_trait::async_trait;
use neulbi_domain::Role;
use neulbi_domain::user::UserEvent;
use neulbi_store::RecordedEvent;
use sqlx::AnyConnection;
use std::sync::Arc;

/// The `users` projector.
pub static DEF: ProjectorDef = ProjectorDef {
    name: "users",
    description: "user profiles and the counselor directory",
    // 2: personal columns hold sealed tokens instead of plaintext.
    // 3: the profile photo's thumbnail key (sealed), for the directory and room lists.
    version: 3,
    schema: include_str!("../../migrations/read_models/users.sql"),
    bind,
    rebuild_indexes: None,
};

fn role(r: Role) -> &'static str {
    match r {
        Role::Client => "client",
        Role::Counselor => "counselor",
        Role::Operator => "operator",
        Role::System => "system",
    }
}

struct Users {
    register: Sql,
    nickname: Sql,
    counselor_nickname: Sql,
    role: Sql,
    publish: Sql,
    login: Sql,
    deactivate: Sql,
    unpublish: Sql,
    erase: Sql,
    thumbnail: Sql,
}

fn bind(n: &Names) -> Arc<dyn Projector> {
    let t = &["rm_users", "rm_counselors"];
    Arc::new(Users {
        register: n.render(
            "INSERT INTO {rm_users} (user_id, nickname, email, role, registered_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (user_id) DO NOTHING",
            t,
        ),
        nickname: n.render("UPDATE {rm_users} SET nickname = $1 WHERE user_id = $2", t),
        counselor_nickname: n.render("UPDATE {rm_counselors} SET nickname = $1 WHERE user_id = $2", t),
        role: n.render("UPDATE {rm_users} SET role = $1 WHERE user_id = $2", t),
        publish: n.render(
            "INSERT INTO {rm_counselors} (user_id, nickname, headline, bio, published_at) \
             VALUES ($1, (SELECT nickname FROM {rm_users} WHERE user_id = $1), $2, $3, $4) \
             ON CONFLICT (user_id) DO UPDATE SET headline = excluded.headline, bio = excluded.bio, published_at = excluded.published_at",
            t,
        ),
        login: n.render(
            "UPDATE {rm_users} SET last_login_at = $1, login_count = login_count + 1 WHERE user_id = $2",
            t,
        ),
        deactivate: n.render("UPDATE {rm_users} SET deactivated_at = $1 WHERE user_id = $2", t),
        unpublish: n.render("DELETE FROM {rm_counselors} WHERE user_id = $1", t),
        erase: n.render(
            "UPDATE {rm_users} SET nickname = NULL, email = NULL, thumbnail = NULL, erased_at = $1 WHERE user_id = $2",
            t,
        ),
        thumbnail: n.render("UPDATE {rm_users} SET thumbnail = $1 WHERE user_id = $2", t),
    })
}

#[async_trait]
impl Projector for Users {
    async fn apply(
        &self,
        tx: &mut AnyConnection,
        e: &RecordedEvent,
        decoded: &Decoded,
    ) -> Result<(), ProjectionError> {
        let Decoded::User(event) = decoded else {
            return Ok(());
        };
        let id = e.stream.id().to_string();
        match event {
            UserEvent::Registered {
                email,
                nickname,
                role: r,
                at,
                ..
            } => {
                sqlx::query(sql(&self.register))
                    .bind(&id)
                    .bind(nickname.value().cloned())
                    .bind(email.value().cloned())
                    .bind(role(*r))
                    .bind(micros(*at))
                    .execute(&mut *tx)
                    .await?;
            }
            UserEvent::ProfileUpdated { nickname, .. } => {
                for q in [&self.nickname, &self.counselor_nickname] {
                    sqlx::query(sql(q))
                        .bind(nickname.value().cloned())
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            UserEvent::RoleGranted { role: r, .. } => {
                sqlx::query(sql(&self.role))
                    .bind(role(*r))
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            UserEvent::CounselorProfilePublished { headline, bio, at } => {
                sqlx::query(sql(&self.publish))
                    .bind(&id)
                    .bind(headline.value().cloned().unwrap_or_default())
                    .bind(bio.value().cloned().unwrap_or_default())
                    .bind(micros(*at))
                    .execute(&mut *tx)
                    .await?;
            }
            UserEvent::LoggedIn { at, .. } => {
                sqlx::query(sql(&self.login))
                    .bind(micros(*at))
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            // The thumbnail shows beside the name in lists; the full image is read from the
            // user stream where the profile itself is answered.
            UserEvent::ProfileImageChanged { thumbnail, .. } => {
                sqlx::query(sql(&self.thumbnail))
                    .bind(thumbnail.value().cloned())
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            UserEvent::ProfileImageRemoved { .. } => {
                sqlx::query(sql(&self.thumbnail))
                    .bind(None::<String>)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            // Sessions are not part of the profile read model.
            UserEvent::SignedOutEverywhere { .. }
            | UserEvent::SignInFailed { .. }
            | UserEvent::RefreshTokenReused { .. } => {}
            UserEvent::Deactivated { at } => {
                sqlx::query(sql(&self.deactivate))
                    .bind(micros(*at))
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql(&self.unpublish))
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
            UserEvent::Erased { at } => {
                sqlx::query(sql(&self.erase))
                    .bind(micros(*at))
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql(&self.unpublish))
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }
}
