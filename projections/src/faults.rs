//! A projector that keeps failing at the same place (a poison event, a read model that refuses
//! a row, a full disk) must not spin: it backs off, narrows the failure down to the one event,
//! records a *stall* an operator can see (`neulbi projections status`, the log), and resumes
//! by itself once a retry succeeds (after a fix). Other projectors are not held up.

use super::ProjectionError;
use super::db::ReadDb;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// Failures in a row after which a projector counts as stalled (about 7 s of retries).
pub const STALL_AFTER: u32 = 3;
/// The longest wait between retries of a failing projector.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest error text kept (driver messages can be long; they carry no personal data, but
/// a bound keeps the table small).
const MAX_ERROR_CHARS: usize = 500;

/// Why a projector is stalled, as recorded for operators.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stall {
    /// The log position it cannot get past.
    pub position: u64,
    /// The last error.
    pub error: String,
    /// Failed attempts in a row.
    pub failures: u64,
    /// When the first of them failed (microseconds since the Unix epoch).
    pub since: i64,
}

/// The wait before retry number `failures` (1-based): 1 s, 2 s, 4 s, … up to [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(16);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// Records (or updates) `name`'s stall at `position`.
pub async fn record(
    db: &ReadDb,
    name: &str,
    position: u64,
    error: &str,
    failures: u32,
) -> Result<(), ProjectionError> {
    let now = chrono::Utc::now().timestamp_micros();
    let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
    sqlx::query(
        "INSERT INTO projection_faults (name, position, error, failures, first_failed_at, last_failed_at) \
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (name) DO UPDATE SET \
         first_failed_at = CASE WHEN projection_faults.position = excluded.position \
             THEN projection_faults.first_failed_at ELSE excluded.first_failed_at END, \
         position = excluded.position, error = excluded.error, failures = excluded.failures, \
         last_failed_at = excluded.last_failed_at",
    )
    .bind(name)
    .bind(i64::try_from(position).unwrap_or(i64::MAX))
    .bind(error)
    .bind(i64::from(failures))
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Forgets `name`'s stall (it got past it).
pub async fn clear(db: &ReadDb, name: &str) -> Result<(), ProjectionError> {
    sqlx::query("DELETE FROM projection_faults WHERE name = $1")
        .bind(name)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Every recorded stall by projector name.
pub async fn all(db: &ReadDb) -> Result<HashMap<String, Stall>, ProjectionError> {
    let rows: Vec<(String, i64, String, i64, i64)> = sqlx::query_as(
        "SELECT name, position, error, failures, first_failed_at FROM projection_faults",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, position, error, failures, since)| {
            (
                name,
                Stall {
                    position: u64::try_from(position).unwrap_or(0),
                    error,
                    failures: u64::try_from(failures).unwrap_or(0),
                    since,
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
