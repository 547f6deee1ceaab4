//! Purging tagged rows: the library behind the `synth-cleanup` binary (feature `cleanup`).
//!
//! Only rows whose tag column is not NULL (and equals the run, when one is given) are ever
//! deleted: the condition is part of every `DELETE`, not only of the row selection. Children go
//! before parents (PostgreSQL: from the foreign keys among the given tables; SQLite: the order
//! given). Rows go in batches, each its own short transaction with a lock timeout, so production
//! tables are never held for long and a run killed at any point is finished by running it again.
//! A table without the tag column is an error before anything is deleted.
//!
//! # Example
//!
//! ```no_run
//! use synth_guards::cleanup::{CleanupOptions, Selector, cleanup};
//!
//! # async fn f() -> Result<(), synth_guards::cleanup::CleanupError> {
//! let mut options = CleanupOptions::new(vec!["order_items".into(), "orders".into()], Selector::AllSynthetic);
//! options.dry_run = true;
//! let report = cleanup("postgres://app@127.0.0.1/shop", &options, &mut |_| {}).await?;
//! println!("{} rows would go", report.total_rows());
//! # Ok(()) }
//! ```

use std::{
    collections::HashMap,
    str::FromStr,
    time::{Duration, Instant},
};

use sqlx::{AssertSqlSafe, Connection, PgConnection, Row, SqliteConnection, sqlite::SqliteConnectOptions};
use synth_ctx::RunId;

use crate::db::{Ident, InvalidIdentifier, TAG_COLUMN};

/// Which tagged rows to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Rows tagged with this run.
    Run(RunId),
    /// Every tagged row, whatever its run.
    AllSynthetic,
}

/// How to clean up.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CleanupOptions {
    /// Tables to purge (`table` or `schema.table`).
    pub tables: Vec<String>,
    /// The tag column (default `synthetic_run_id`).
    pub tag_column: String,
    /// Which rows.
    pub selector: Selector,
    /// Count only; change nothing.
    pub dry_run: bool,
    /// Rows per batch (default 1000).
    pub batch_size: u32,
    /// Pause between batches (default 10 ms).
    pub pause: Duration,
    /// How long a batch may wait for a lock before it gives way (default 100 ms).
    pub lock_timeout: Duration,
    /// How many times a batch that timed out on a lock is retried (default 20).
    pub lock_retries: u32,
}

impl CleanupOptions {
    /// Defaults for `tables` and `selector`.
    pub fn new(tables: Vec<String>, selector: Selector) -> Self {
        CleanupOptions {
            tables,
            tag_column: TAG_COLUMN.to_owned(),
            selector,
            dry_run: false,
            batch_size: 1000,
            pause: Duration::from_millis(10),
            lock_timeout: Duration::from_millis(100),
            lock_retries: 20,
        }
    }
}

/// What happened to one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableReport {
    /// The table.
    pub table: String,
    /// Rows deleted (or, in a dry run, that would be).
    pub rows: u64,
    /// Batches run.
    pub batches: u64,
    /// Batches retried after a lock timeout.
    pub lock_retries: u64,
    /// The longest batch (its transaction, from begin to commit).
    pub longest_batch: Duration,
    /// Time spent on the table.
    pub elapsed: Duration,
}

/// What a cleanup did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Per table, in the order they were processed.
    pub tables: Vec<TableReport>,
    /// Total time.
    pub elapsed: Duration,
}

impl Report {
    /// Rows over all tables.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// Progress, for a progress bar.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// The tagged rows of `table` were counted (before deleting).
    Counted {
        /// The table.
        table: &'a str,
        /// Rows to go.
        rows: u64,
    },
    /// A batch of `table` was deleted.
    Batch {
        /// The table.
        table: &'a str,
        /// Rows in this batch.
        rows: u64,
    },
}

/// Why a cleanup stopped. Anything deleted before the error stays deleted (each batch commits
/// on its own); running again finishes the job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CleanupError {
    /// The URL is neither `postgres://` nor `sqlite:`.
    #[error("unsupported database URL: use postgres://… or sqlite://…")]
    UnsupportedUrl,
    /// No table given.
    #[error("no table given: name the tables to clean, children before parents on SQLite")]
    NoTables,
    /// A name is not a plain identifier.
    #[error(transparent)]
    Identifier(#[from] InvalidIdentifier),
    /// A table does not exist.
    #[error("table `{table}` does not exist; nothing was deleted")]
    MissingTable {
        /// The table.
        table: String,
    },
    /// A table has no tag column: refusing, rather than deleting from an untagged table.
    #[error(
        "table `{table}` has no `{column}` column, so its synthetic rows cannot be told apart; nothing was deleted (add it with synth_guards::db::*::add_tag_column)"
    )]
    MissingTagColumn {
        /// The table.
        table: String,
        /// The expected tag column.
        column: String,
    },
    /// The tables' foreign keys form a cycle, so there is no children-first order.
    #[error("the foreign keys among {tables:?} form a cycle: there is no order that deletes children first")]
    ForeignKeyCycle {
        /// The tables in the cycle.
        tables: Vec<String>,
    },
    /// A batch kept timing out on locks.
    #[error(
        "table `{table}`: a batch waited for locks {retries} times; the table is busy, run again later ({deleted} rows deleted so far)"
    )]
    LockTimeout {
        /// The table.
        table: String,
        /// Retries made.
        retries: u32,
        /// Rows deleted before stopping, over all tables.
        deleted: u64,
    },
    /// The database failed.
    #[error("database error{}: {source} ({deleted} rows deleted so far; run again to finish)", table.as_ref().map(|t| format!(" on `{t}`")).unwrap_or_default())]
    Database {
        /// The table being cleaned, if any.
        table: Option<String>,
        /// Rows deleted before stopping.
        deleted: u64,
        /// The driver's error.
        source: sqlx::Error,
    },
}

enum Backend {
    Postgres,
    Sqlite,
}

fn backend(url: &str) -> Result<Backend, CleanupError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else {
        Err(CleanupError::UnsupportedUrl)
    }
}

/// Runs a cleanup; see the [module docs](self).
pub async fn cleanup(
    database_url: &str,
    options: &CleanupOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Report, CleanupError> {
    let backend = backend(database_url)?;
    if options.tables.is_empty() {
        return Err(CleanupError::NoTables);
    }
    let tables = options.tables.iter().map(|t| Ident::new(t)).collect::<Result<Vec<_>, _>>()?;
    let column = Ident::new(&options.tag_column)?;
    let connect_err = |source| CleanupError::Database { table: None, deleted: 0, source };
    let started = Instant::now();
    let mut report = Report { dry_run: options.dry_run, ..Report::default() };
    match backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(database_url).await.map_err(connect_err)?;
            let ordered = pg::check_and_order(&mut conn, &tables, &column).await?;
            for table in &ordered {
                let t = pg::clean_table(&mut conn, table, &column, options, report.total_rows(), progress)
                    .await?;
                report.tables.push(t);
            }
        }
        Backend::Sqlite => {
            let connect = SqliteConnectOptions::from_str(database_url)
                .map_err(connect_err)?
                .busy_timeout(options.lock_timeout);
            let mut conn = SqliteConnection::connect_with(&connect).await.map_err(connect_err)?;
            for table in &tables {
                sqlite::check(&mut conn, table, &column).await?;
            }
            for table in &tables {
                let t =
                    sqlite::clean_table(&mut conn, table, &column, options, report.total_rows(), progress)
                        .await?;
                report.tables.push(t);
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The WHERE condition on tagged rows; `$1`/`?1` is the run when there is one.
fn tag_condition(column: &Ident, selector: &Selector, placeholder: &str) -> String {
    match selector {
        Selector::Run(_) => format!("{c} IS NOT NULL AND {c} = {placeholder}", c = column.quoted()),
        Selector::AllSynthetic => format!("{c} IS NOT NULL", c = column.quoted()),
    }
}

fn run_text(selector: &Selector) -> String {
    match selector {
        Selector::Run(r) => r.to_string(),
        Selector::AllSynthetic => String::new(),
    }
}

/// Orders `tables` children first, given `edges` (child, parent) among them; stable otherwise.
fn children_first(tables: &[Ident], edges: &[(usize, usize)]) -> Result<Vec<Ident>, CleanupError> {
    let mut remaining_children: Vec<usize> = vec![0; tables.len()];
    for &(child, parent) in edges {
        if child != parent {
            remaining_children[parent] += 1;
        }
    }
    let mut done = vec![false; tables.len()];
    let mut order = Vec::with_capacity(tables.len());
    while order.len() < tables.len() {
        let Some(next) = (0..tables.len()).find(|&i| !done[i] && remaining_children[i] == 0) else {
            let tables = (0..tables.len()).filter(|&i| !done[i]).map(|i| tables[i].to_string()).collect();
            return Err(CleanupError::ForeignKeyCycle { tables });
        };
        done[next] = true;
        order.push(tables[next].clone());
        for &(child, parent) in edges {
            if child == next && parent != child {
                remaining_children[parent] -= 1;
            }
        }
    }
    Ok(order)
}

mod pg {
    use super::*;

    pub(super) async fn check_and_order(
        conn: &mut PgConnection,
        tables: &[Ident],
        column: &Ident,
    ) -> Result<Vec<Ident>, CleanupError> {
        let err = |t: Option<&Ident>| {
            let table = t.map(|t| t.to_string());
            move |source| CleanupError::Database { table, deleted: 0, source }
        };
        let mut oids = Vec::with_capacity(tables.len());
        for table in tables {
            let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
                .bind(table.quoted())
                .fetch_one(&mut *conn)
                .await
                .map_err(err(Some(table)))?;
            let oid = oid.ok_or_else(|| CleanupError::MissingTable { table: table.to_string() })?;
            let has_column: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::int8::oid AND attname = $2 AND NOT attisdropped)",
            )
            .bind(oid)
            .bind(column.as_str())
            .fetch_one(&mut *conn)
            .await
            .map_err(err(Some(table)))?;
            if !has_column {
                return Err(CleanupError::MissingTagColumn {
                    table: table.to_string(),
                    column: column.to_string(),
                });
            }
            oids.push(oid);
        }
        let rows = sqlx::query(
            "SELECT conrelid::int8, confrelid::int8 FROM pg_constraint WHERE contype = 'f' AND conrelid::int8 = ANY($1) AND confrelid::int8 = ANY($1)",
        )
        .bind(&oids)
        .fetch_all(&mut *conn)
        .await
        .map_err(err(None))?;
        let index: HashMap<i64, usize> = oids.iter().enumerate().map(|(i, o)| (*o, i)).collect();
        let mut edges = Vec::new();
        for row in rows {
            let (child, parent): (i64, i64) =
                (row.try_get(0).map_err(err(None))?, row.try_get(1).map_err(err(None))?);
            if let (Some(&c), Some(&p)) = (index.get(&child), index.get(&parent)) {
                edges.push((c, p));
            }
        }
        children_first(tables, &edges)
    }

    pub(super) async fn clean_table(
        conn: &mut PgConnection,
        table: &Ident,
        column: &Ident,
        options: &CleanupOptions,
        deleted_before: u64,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<TableReport, CleanupError> {
        let started = Instant::now();
        let mut report = TableReport { table: table.to_string(), ..TableReport::default() };
        let condition = tag_condition(column, &options.selector, "$2");
        let run = run_text(&options.selector);
        let db_err = |deleted: u64| {
            let table = Some(table.to_string());
            move |source| CleanupError::Database { table, deleted, source }
        };

        let count_sql = format!(
            "SELECT count(*) FROM {} WHERE {}",
            table.quoted(),
            tag_condition(column, &options.selector, "$1")
        );
        let mut count = sqlx::query_scalar::<_, i64>(AssertSqlSafe(count_sql));
        if matches!(options.selector, Selector::Run(_)) {
            count = count.bind(run.clone());
        }
        let total =
            u64::try_from(count.fetch_one(&mut *conn).await.map_err(db_err(deleted_before))?).unwrap_or(0);
        progress(Progress::Counted { table: table.as_str(), rows: total });
        if options.dry_run {
            report.rows = total;
            report.elapsed = started.elapsed();
            return Ok(report);
        }

        // The tag condition is repeated on the DELETE itself: whatever the inner selection
        // returns, an untagged row (or another run's) can never match.
        let delete_sql = format!(
            "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {condition} LIMIT $1)) AND {condition}",
            t = table.quoted()
        );
        let lock_timeout =
            format!("SET LOCAL lock_timeout = '{}ms'", options.lock_timeout.as_millis().max(1));
        let mut retries = 0;
        loop {
            let batch_started = Instant::now();
            let attempt: Result<u64, sqlx::Error> = async {
                let mut tx = conn.begin().await?;
                sqlx::query(AssertSqlSafe(lock_timeout.clone())).execute(&mut *tx).await?;
                let mut q =
                    sqlx::query(AssertSqlSafe(delete_sql.clone())).bind(i64::from(options.batch_size));
                if matches!(options.selector, Selector::Run(_)) {
                    q = q.bind(run.clone());
                }
                let n = q.execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                Ok(n)
            }
            .await;
            let n = match attempt {
                Ok(n) => n,
                Err(e) if is_lock_timeout(&e) => {
                    retries += 1;
                    report.lock_retries += 1;
                    if retries > options.lock_retries {
                        return Err(CleanupError::LockTimeout {
                            table: table.to_string(),
                            retries,
                            deleted: deleted_before + report.rows,
                        });
                    }
                    tokio::time::sleep(options.pause.max(Duration::from_millis(10)) * retries).await;
                    continue;
                }
                Err(e) => return Err(db_err(deleted_before + report.rows)(e)),
            };
            retries = 0;
            report.longest_batch = report.longest_batch.max(batch_started.elapsed());
            if n == 0 {
                break;
            }
            report.rows += n;
            report.batches += 1;
            progress(Progress::Batch { table: table.as_str(), rows: n });
            if n < u64::from(options.batch_size) {
                break;
            }
            if !options.pause.is_zero() {
                tokio::time::sleep(options.pause).await;
            }
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    fn is_lock_timeout(e: &sqlx::Error) -> bool {
        // 55P03: lock_not_available (lock_timeout expired).
        e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "55P03")
    }
}

mod sqlite {
    use super::*;

    pub(super) async fn check(
        conn: &mut SqliteConnection,
        table: &Ident,
        column: &Ident,
    ) -> Result<(), CleanupError> {
        let sql = format!("SELECT name FROM pragma_table_info('{}')", table.name());
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut *conn).await.map_err(|source| {
            CleanupError::Database { table: Some(table.to_string()), deleted: 0, source }
        })?;
        if rows.is_empty() {
            return Err(CleanupError::MissingTable { table: table.to_string() });
        }
        if !rows.iter().any(|r| r.try_get::<String, _>(0).is_ok_and(|n| n == column.as_str())) {
            return Err(CleanupError::MissingTagColumn {
                table: table.to_string(),
                column: column.to_string(),
            });
        }
        Ok(())
    }

    pub(super) async fn clean_table(
        conn: &mut SqliteConnection,
        table: &Ident,
        column: &Ident,
        options: &CleanupOptions,
        deleted_before: u64,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<TableReport, CleanupError> {
        let started = Instant::now();
        let mut report = TableReport { table: table.to_string(), ..TableReport::default() };
        let condition = tag_condition(column, &options.selector, "?2");
        let run = run_text(&options.selector);
        let db_err = |deleted: u64| {
            let table = Some(table.to_string());
            move |source| CleanupError::Database { table, deleted, source }
        };
        let count_sql = format!(
            "SELECT count(*) FROM {} WHERE {}",
            table.quoted(),
            tag_condition(column, &options.selector, "?1")
        );
        let mut count = sqlx::query_scalar::<_, i64>(AssertSqlSafe(count_sql));
        if matches!(options.selector, Selector::Run(_)) {
            count = count.bind(run.clone());
        }
        let total = count.fetch_one(&mut *conn).await.map_err(db_err(deleted_before))?;
        let total = u64::try_from(total).unwrap_or(0);
        progress(Progress::Counted { table: table.as_str(), rows: total });
        if options.dry_run {
            report.rows = total;
            report.elapsed = started.elapsed();
            return Ok(report);
        }
        let delete_sql = format!(
            "DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE {condition} LIMIT ?1) AND {condition}",
            t = table.quoted()
        );
        loop {
            let batch_started = Instant::now();
            let mut q = sqlx::query(AssertSqlSafe(delete_sql.clone())).bind(i64::from(options.batch_size));
            if matches!(options.selector, Selector::Run(_)) {
                q = q.bind(run.clone());
            }
            let n =
                q.execute(&mut *conn).await.map_err(db_err(deleted_before + report.rows))?.rows_affected();
            report.longest_batch = report.longest_batch.max(batch_started.elapsed());
            if n == 0 {
                break;
            }
            report.rows += n;
            report.batches += 1;
            progress(Progress::Batch { table: table.as_str(), rows: n });
            if n < u64::from(options.batch_size) {
                break;
            }
            if !options.pause.is_zero() {
                tokio::time::sleep(options.pause).await;
            }
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(names: &[&str]) -> Vec<Ident> {
        names.iter().map(|n| Ident::new(n).unwrap()).collect()
    }

    #[test]
    fn children_go_first_and_cycles_are_refused() {
        // users <- orders <- items; payments -> orders
        let t = idents(&["users", "orders", "items", "payments"]);
        let edges = [(1, 0), (2, 1), (3, 1)];
        let order: Vec<String> =
            children_first(&t, &edges).unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(order, ["items", "payments", "orders", "users"]);
        let self_ref = [(0, 0)];
        assert_eq!(children_first(&t[..1], &self_ref).unwrap().len(), 1);
        let cycle = [(0, 1), (1, 0)];
        assert!(matches!(children_first(&t[..2], &cycle), Err(CleanupError::ForeignKeyCycle { .. })));
    }

    #[test]
    fn urls() {
        assert!(backend("postgres://x").is_ok());
        assert!(backend("sqlite://x.db").is_ok());
        assert!(matches!(backend("mysql://x"), Err(CleanupError::UnsupportedUrl)));
    }
}
