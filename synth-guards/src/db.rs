//! Tagged rows: rows written by synthetic requests carry the run id in a tag column, so they can
//! be told apart and purged by [`synth-cleanup`](crate::cleanup) without touching a real row.
//!
//! The convention: a nullable text column `synthetic_run_id` ([`TAG_COLUMN`]); NULL for real rows,
//! the run id for synthetic ones, with a partial index on the non-NULL rows.
//!
//! - **PostgreSQL** (feature `postgres`): the application does not change its INSERTs. The
//!   migration helper gives the column a default that reads the setting `synth.run_id`
//!   ([`SESSION_SETTING`]); [`postgres::begin_tagged`] sets that setting from the current
//!   synthetic scope **for its transaction only**. See [`postgres`] for why it is never set for a
//!   whole session.
//! - **SQLite** (feature `sqlite`): no session settings, so bind the tag explicitly with
//!   [`current_tag`]; [`sqlite::add_tag_column`] adds the column and index.

use std::fmt;

/// The tag column's name.
pub const TAG_COLUMN: &str = "synthetic_run_id";

/// The PostgreSQL setting the tag column's default reads.
pub const SESSION_SETTING: &str = "synth.run_id";

/// The run id to store in the tag column for the current scope: `Some(run)` inside a synthetic
/// scope, `None` (NULL) for real traffic.
///
/// ```
/// assert_eq!(synth_guards::db::current_tag(), None);
/// ```
pub fn current_tag() -> Option<String> {
    synth_ctx::current().map(|s| s.run().to_string())
}

/// A table or column name that cannot be used safely in SQL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{name}` is not a plain SQL identifier: use letters, digits and `_` (optionally `schema.table`), starting with a letter or `_`, at most 63 characters each"
)]
pub struct InvalidIdentifier {
    /// The rejected name.
    pub name: String,
}

/// A checked, quoted SQL identifier (`"table"` or `"schema"."table"`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Ident {
    raw: String,
    quoted: String,
}

impl Ident {
    /// Checks `name` (`table` or `schema.table`) and quotes it.
    pub fn new(name: &str) -> Result<Self, InvalidIdentifier> {
        let bad = || InvalidIdentifier { name: name.to_owned() };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 {
            return Err(bad());
        }
        for p in &parts {
            let ok = !p.is_empty()
                && p.len() <= 63
                && p.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(bad());
            }
        }
        let quoted = parts.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(".");
        Ok(Ident { raw: name.to_owned(), quoted })
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The quoted form, safe to put in SQL text.
    pub fn quoted(&self) -> &str {
        &self.quoted
    }

    /// The last part (the table's own name).
    pub fn name(&self) -> &str {
        self.raw.rsplit('.').next().unwrap_or(&self.raw)
    }

    /// The schema part, if given.
    pub fn schema(&self) -> Option<&str> {
        self.raw.rsplit_once('.').map(|(s, _)| s)
    }

    /// A name for an index on this table's tag column.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    fn tag_index_name(&self, column: &Ident) -> String {
        let mut n = format!("{}_{}_idx", self.name(), column.name());
        n.truncate(63);
        format!("\"{n}\"")
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The partial index on tagged rows, the same for PostgreSQL and SQLite.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn tag_index_sql(table: &Ident, column: &Ident) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS {i} ON {t} ({c}) WHERE {c} IS NOT NULL",
        i = table.tag_index_name(column),
        t = table.quoted(),
        c = column.quoted()
    )
}

/// Why a migration helper failed.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// A name was not a plain identifier.
    #[error(transparent)]
    Identifier(#[from] InvalidIdentifier),
    /// The database refused.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// PostgreSQL helpers (feature `postgres`).
///
/// # Why the tag is transaction-local only
///
/// A pool hands the same connection to one request after another. A run id set for a whole
/// session would tag the next **real** request's inserts on that connection (whatever API it
/// uses: `execute(&pool)`, `pool.begin()`), and `synth-cleanup --run` would then delete real
/// rows. So the only way to tag is [`begin_tagged`](postgres::begin_tagged): the setting lives and dies with one
/// transaction, and no path can carry it into another request.
///
/// - Write a synthetic request's rows inside `begin_tagged`. An insert outside it is not tagged
///   (it looks real and is never purged): the safe direction for real data, but test data left
///   behind, so count synthetic writes against tagged rows as the shop's demo does.
/// - **PgBouncer**: transaction pooling works, since the setting never outlives the
///   transaction that the bouncer pins to one server connection; session pooling works too.
///   Statement pooling cannot run multi-statement transactions, so it cannot tag.
#[cfg(feature = "postgres")]
pub mod postgres {
    use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Transaction};

    pub use super::MigrateError;
    use super::{Ident, SESSION_SETTING, TAG_COLUMN, current_tag};

    /// Begins a transaction whose inserts into tagged tables carry the current run id (NULL for
    /// real traffic).
    ///
    /// The setting is transaction-local (`set_config(.., true)`, i.e. `SET LOCAL`): it ends with
    /// the transaction, whether it commits, rolls back or is dropped, so the pooled connection
    /// goes back to the pool carrying nothing.
    pub async fn begin_tagged(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        // Set for real traffic too (to ''): the column default reads '' as NULL, and an outer
        // session value set by code outside synth can never leak into this transaction.
        let run = current_tag().unwrap_or_default();
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(SESSION_SETTING)
            .bind(run)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// Adds the tag column to `table` (if missing) with a default that reads the session
    /// setting, and a partial index on tagged rows. Safe to run again.
    pub async fn add_tag_column(conn: &mut PgConnection, table: &str) -> Result<(), MigrateError> {
        let table = Ident::new(table)?;
        let column = Ident::new(TAG_COLUMN)?;
        let alter = format!(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} text DEFAULT NULLIF(current_setting('{SESSION_SETTING}', true), '')",
            t = table.quoted(),
            c = column.quoted()
        );
        sqlx::query(AssertSqlSafe(alter)).execute(&mut *conn).await?;
        sqlx::query(AssertSqlSafe(super::tag_index_sql(&table, &column))).execute(&mut *conn).await?;
        Ok(())
    }
}

/// SQLite helpers (feature `sqlite`).
#[cfg(feature = "sqlite")]
pub mod sqlite {
    use sqlx::{AssertSqlSafe, Row, SqliteConnection};

    pub use super::MigrateError;
    use super::{Ident, TAG_COLUMN};

    /// Adds the tag column to `table` (if missing) and a partial index on tagged rows. Safe to
    /// run again. Inserts bind the tag explicitly: [`current_tag`](super::current_tag).
    pub async fn add_tag_column(conn: &mut SqliteConnection, table: &str) -> Result<(), MigrateError> {
        let table = Ident::new(table)?;
        let column = Ident::new(TAG_COLUMN)?;
        let info = format!("SELECT name FROM pragma_table_info('{}')", table.name());
        let columns = sqlx::query(AssertSqlSafe(info)).fetch_all(&mut *conn).await?;
        let has = columns.iter().any(|r| r.try_get::<String, _>(0).is_ok_and(|n| n == TAG_COLUMN));
        if !has {
            let alter = format!("ALTER TABLE {} ADD COLUMN {} TEXT", table.quoted(), column.quoted());
            sqlx::query(AssertSqlSafe(alter)).execute(&mut *conn).await?;
        }
        sqlx::query(AssertSqlSafe(super::tag_index_sql(&table, &column))).execute(&mut *conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(Ident::new("orders").unwrap().quoted(), "\"orders\"");
        assert_eq!(Ident::new("shop.order_items").unwrap().quoted(), "\"shop\".\"order_items\"");
        for bad in ["", "a b", "a;drop table x", "1a", "a.b.c", "\"x\"", "a-b", &"x".repeat(64)] {
            assert!(Ident::new(bad).is_err(), "{bad}");
        }
    }
}
