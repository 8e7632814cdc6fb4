//! Multi-row statements: a projector on a hot path writes a batch's rows with a few
//! statements instead of one per event, since each statement is a round trip to the
//! database (on SQLite, a hand-off to sqlx's worker thread and back).

use super::ProjectionError;
use super::db::{Dialect, Sql, sql};
use sqlx::AnyConnection;
use std::sync::Arc;

/// Rows per multi-row statement (SQLite allows 32,766 parameters per statement).
const CHUNK: usize = 100;

/// A query being bound.
pub(crate) type AnyQuery<'q> =
    sqlx::query::Query<'q, sqlx::Any, <sqlx::Any as sqlx::Database>::Arguments>;

/// Writes `rows` with multi-row statements of up to [`CHUNK`] rows each ([`multi_row`]):
/// `into` is the statement up to `VALUES `, `suffix` follows the values, and `bind` binds
/// one row's `cols` values.
pub(crate) async fn insert_rows<T: Sync>(
    tx: &mut AnyConnection,
    dialect: Dialect,
    into: &str,
    cols: usize,
    suffix: &str,
    rows: &[T],
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q> + Send + Sync,
) -> Result<(), ProjectionError> {
    for chunk in rows.chunks(CHUNK) {
        let stmt = multi_row(into, cols, chunk.len(), dialect, suffix);
        let query = chunk.iter().fold(sqlx::query(sql(&stmt)), &bind);
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// `prefix (..$1..$cols), (...), ... suffix` with numbered placeholders on PostgreSQL, and
/// anonymous `?` ones on SQLite: SQLite treats `$n` as a name, and looking a named
/// parameter up walks the statement's list of names, so binding the hundreds of `$n` of a
/// multi-row statement cost time quadratic in its size (7% of a rebuild's CPU).
fn multi_row(prefix: &str, cols: usize, rows: usize, dialect: Dialect, suffix: &str) -> Sql {
    let mut s = String::with_capacity(prefix.len() + rows * cols * 6 + suffix.len());
    s.push_str(prefix);
    let mut n = 1;
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            match dialect {
                Dialect::Sqlite => s.push('?'),
                Dialect::Postgres => {
                    s.push('$');
                    s.push_str(&n.to_string());
                    n += 1;
                }
            }
        }
        s.push(')');
    }
    s.push_str(suffix);
    Arc::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_placeholders_follow_the_dialect() {
        assert_eq!(
            &*multi_row(
                "INSERT INTO t (a, b) VALUES ",
                2,
                2,
                Dialect::Postgres,
                " X"
            ),
            "INSERT INTO t (a, b) VALUES ($1,$2),($3,$4) X"
        );
        assert_eq!(
            &*multi_row("INSERT INTO t (a, b) VALUES ", 2, 2, Dialect::Sqlite, ""),
            "INSERT INTO t (a, b) VALUES (?,?),(?,?)"
        );
    }
}
