//! The orders database: SQLite (default) or PostgreSQL, with synth's tag column on both tables.
//!
//! The two backends show the two ways to tag rows: on PostgreSQL the column's default reads a
//! transaction setting that [`synth_guards::db::postgres::begin_tagged`] sets from the request's
//! context, so the `INSERT`s do not mention it; on SQLite the insert binds
//! [`synth_guards::db::current_tag`] itself.

use std::str::FromStr as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::{
    PgPool, Row as _, SqlitePool,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use synth_guards::db::{current_tag, postgres as pg, sqlite};

use crate::common::SplitCount;

/// The tables, children first: the order `synth-cleanup --tables` takes.
pub const TABLES: [&str; 2] = ["order_lines", "orders"];

/// The dark `catalog-v2`'s table: one row per search it served (tagged, since it only ever gets
/// `dark` copies), purged with `synth-cleanup --tables searches --run dark-catalog-v2`.
pub const DARK_TABLES: [&str; 1] = ["searches"];

/// A database error, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite:` nor `postgres://`.
    #[error("DATABASE_URL must start with sqlite: or postgres://, got `{0}`")]
    Url(String),
    /// A query failed.
    #[error("{what}: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The order cannot be stored as given.
    #[error("{0}")]
    Invalid(&'static str),
    /// Adding the tag column failed.
    #[error("adding the synthetic tag column: {0}")]
    Tag(#[from] synth_guards::db::MigrateError),
}

/// `id, email, total_cents, status, synthetic_run_id`.
type OrderRow = (i64, String, i64, String, Option<String>);
/// `id, order_id, sku, qty, price_cents, synthetic_run_id`.
type LineRow = (i64, i64, String, i64, i64, Option<String>);

fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// One order line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    /// `sku-N`.
    pub sku: String,
    /// Quantity.
    pub qty: u32,
    /// Unit price.
    pub price_cents: u64,
}

/// Row counts and a checksum of the real rows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbCounts {
    /// `orders` rows: untagged (real) and tagged (synthetic, any run).
    pub orders: SplitCount,
    /// `order_lines` rows, likewise.
    pub lines: SplitCount,
    /// Tagged rows (both tables) of the run asked about.
    pub tagged_by_run: u64,
    /// SHA-256 (hex, shortened) of every real row of both tables.
    pub real_checksum: String,
}

/// Rows of the `searches` table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchRows {
    /// Untagged (a real request reached `catalog-v2`: must stay 0) and tagged rows (any run).
    pub rows: SplitCount,
    /// Tagged rows of the run asked about.
    pub tagged_by_run: u64,
}

/// The orders database.
#[derive(Clone, Debug)]
pub enum Store {
    /// SQLite (the default: a file).
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

impl Store {
    /// Connects and creates the tables (and the tag columns) if missing.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(q("parsing the SQLite URL"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL's usual pairing: durable at checkpoints, no fsync per commit.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
            Store::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .map_err(q("opening the SQLite database"))?,
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Store::Postgres(
                PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(q("connecting to PostgreSQL"))?,
            )
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => {
                let mut c = pool.acquire().await.map_err(q("connecting"))?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL, \
                     total_cents INTEGER NOT NULL, status TEXT NOT NULL)",
                )
                .execute(&mut *c)
                .await
                .map_err(q("creating orders"))?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS order_lines (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                     order_id INTEGER NOT NULL REFERENCES orders(id), sku TEXT NOT NULL, qty INTEGER NOT NULL, \
                     price_cents INTEGER NOT NULL)",
                )
                .execute(&mut *c)
                .await
                .map_err(q("creating order_lines"))?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS searches (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                     query TEXT NOT NULL, results INTEGER NOT NULL)",
                )
                .execute(&mut *c)
                .await
                .map_err(q("creating searches"))?;
                for t in TABLES.iter().chain(&DARK_TABLES) {
                    sqlite::add_tag_column(&mut c, t).await?;
                }
            }
            Store::Postgres(pool) => {
                let mut c = pool.acquire().await.map_err(q("connecting"))?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS orders (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL, \
                     total_cents BIGINT NOT NULL, status TEXT NOT NULL)",
                )
                .execute(&mut *c)
                .await
                .map_err(q("creating orders"))?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS order_lines (id BIGSERIAL PRIMARY KEY, \
                     order_id BIGINT NOT NULL REFERENCES orders(id), sku TEXT NOT NULL, qty INTEGER NOT NULL, \
                     price_cents BIGINT NOT NULL)",
                )
                .execute(&mut *c)
                .await
                .map_err(q("creating order_lines"))?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS searches (id BIGSERIAL PRIMARY KEY, query TEXT NOT NULL, \
                     results INTEGER NOT NULL)",
                )
                .execute(&mut *c)
                .await
                .map_err(q("creating searches"))?;
                for t in TABLES.iter().chain(&DARK_TABLES) {
                    pg::add_tag_column(&mut c, t).await?;
                }
            }
        }
        Ok(())
    }

    /// Inserts an order and its lines in one transaction, tagged when the current context is
    /// synthetic. Returns the order id.
    pub async fn insert_order(&self, email: &str, lines: &[Line]) -> Result<i64, StoreError> {
        let total = lines
            .iter()
            .try_fold(0u64, |acc, l| {
                l.price_cents.checked_mul(u64::from(l.qty)).and_then(|x| acc.checked_add(x))
            })
            .and_then(|t| i64::try_from(t).ok())
            .ok_or(StoreError::Invalid("the order total is too large"))?;
        match self {
            Store::Sqlite(pool) => {
                let tag = current_tag();
                let mut tx = pool.begin().await.map_err(q("beginning"))?;
                let id: i64 = sqlx::query(
                    "INSERT INTO orders (email, total_cents, status, synthetic_run_id) VALUES (?, ?, 'new', ?) RETURNING id",
                )
                .bind(email)
                .bind(total)
                .bind(&tag)
                .fetch_one(&mut *tx)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(q("inserting the order"))?;
                for l in lines {
                    sqlx::query(
                        "INSERT INTO order_lines (order_id, sku, qty, price_cents, synthetic_run_id) VALUES (?, ?, ?, ?, ?)",
                    )
                    .bind(id)
                    .bind(&l.sku)
                    .bind(i64::from(l.qty))
                    .bind(i64::try_from(l.price_cents).unwrap_or(i64::MAX))
                    .bind(&tag)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("inserting an order line"))?;
                }
                tx.commit().await.map_err(q("committing the order"))?;
                Ok(id)
            }
            Store::Postgres(pool) => {
                // The tag column's default reads the setting begin_tagged made from the context.
                let mut tx = pg::begin_tagged(pool).await.map_err(q("beginning"))?;
                let id: i64 = sqlx::query(
                    "INSERT INTO orders (email, total_cents, status) VALUES ($1, $2, 'new') RETURNING id",
                )
                .bind(email)
                .bind(total)
                .fetch_one(&mut *tx)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(q("inserting the order"))?;
                for l in lines {
                    sqlx::query(
                        "INSERT INTO order_lines (order_id, sku, qty, price_cents) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(id)
                    .bind(&l.sku)
                    .bind(i32::try_from(l.qty).unwrap_or(i32::MAX))
                    .bind(i64::try_from(l.price_cents).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await
                    .map_err(q("inserting an order line"))?;
                }
                tx.commit().await.map_err(q("committing the order"))?;
                Ok(id)
            }
        }
    }

    /// Records one search `catalog-v2` served, tagged when the current context is synthetic.
    pub async fn record_search(&self, query: &str, results: usize) -> Result<(), StoreError> {
        let results = i32::try_from(results).unwrap_or(i32::MAX);
        match self {
            Store::Sqlite(pool) => {
                sqlx::query("INSERT INTO searches (query, results, synthetic_run_id) VALUES (?, ?, ?)")
                    .bind(query)
                    .bind(results)
                    .bind(current_tag())
                    .execute(pool)
                    .await
                    .map_err(q("recording the search"))?;
            }
            Store::Postgres(pool) => {
                // The tag column's default reads the setting begin_tagged made from the context.
                let mut tx = pg::begin_tagged(pool).await.map_err(q("beginning"))?;
                sqlx::query("INSERT INTO searches (query, results) VALUES ($1, $2)")
                    .bind(query)
                    .bind(results)
                    .execute(&mut *tx)
                    .await
                    .map_err(q("recording the search"))?;
                tx.commit().await.map_err(q("committing the search"))?;
            }
        }
        Ok(())
    }

    /// Counts the `searches` rows: untagged, tagged, and tagged with `run`.
    pub async fn search_rows(&self, run: &str) -> Result<SearchRows, StoreError> {
        let tags: Vec<(Option<String>,)> = match self {
            Store::Sqlite(pool) => {
                sqlx::query_as("SELECT synthetic_run_id FROM searches").fetch_all(pool).await
            }
            Store::Postgres(pool) => {
                sqlx::query_as("SELECT synthetic_run_id FROM searches").fetch_all(pool).await
            }
        }
        .map_err(q("reading searches"))?;
        let mut out = SearchRows::default();
        for (tag,) in &tags {
            match tag {
                None => out.rows.real += 1,
                Some(t) => {
                    out.rows.synthetic += 1;
                    out.tagged_by_run += u64::from(t == run);
                }
            }
        }
        Ok(out)
    }

    /// Sets an order's status (`paid`, `payment_stubbed`, `payment_failed`).
    pub async fn set_status(&self, id: i64, status: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => sqlx::query("UPDATE orders SET status = ? WHERE id = ?")
                .bind(status)
                .bind(id)
                .execute(pool)
                .await
                .map(drop),
            Store::Postgres(pool) => sqlx::query("UPDATE orders SET status = $1 WHERE id = $2")
                .bind(status)
                .bind(id)
                .execute(pool)
                .await
                .map(drop),
        }
        .map_err(q("updating the order status"))
    }

    /// Counts rows real and tagged, the rows of `run`, and checksums the real rows.
    pub async fn counts(&self, run: &str) -> Result<DbCounts, StoreError> {
        let (orders, lines): (Vec<OrderRow>, Vec<LineRow>) =
            match self {
                Store::Sqlite(pool) => (
                    sqlx::query_as("SELECT id, email, total_cents, status, synthetic_run_id FROM orders ORDER BY id")
                        .fetch_all(pool)
                        .await
                        .map_err(q("reading orders"))?,
                    sqlx::query_as(
                        "SELECT id, order_id, sku, qty, price_cents, synthetic_run_id FROM order_lines ORDER BY id",
                    )
                    .fetch_all(pool)
                    .await
                    .map_err(q("reading order lines"))?,
                ),
                Store::Postgres(pool) => (
                    sqlx::query_as("SELECT id, email, total_cents, status, synthetic_run_id FROM orders ORDER BY id")
                        .fetch_all(pool)
                        .await
                        .map_err(q("reading orders"))?,
                    sqlx::query_as(
                        "SELECT id, order_id, sku, qty::bigint, price_cents, synthetic_run_id FROM order_lines ORDER BY id",
                    )
                    .fetch_all(pool)
                    .await
                    .map_err(q("reading order lines"))?,
                ),
            };
        let mut c = DbCounts::default();
        let mut hash = Sha256::new();
        for (id, email, total, status, tag) in &orders {
            match tag {
                None => {
                    c.orders.real += 1;
                    hash.update(format!("o|{id}|{email}|{total}|{status}\n"));
                }
                Some(t) => {
                    c.orders.synthetic += 1;
                    c.tagged_by_run += u64::from(t == run);
                }
            }
        }
        for (id, order, sku, qty, price, tag) in &lines {
            match tag {
                None => {
                    c.lines.real += 1;
                    hash.update(format!("l|{id}|{order}|{sku}|{qty}|{price}\n"));
                }
                Some(t) => {
                    c.lines.synthetic += 1;
                    c.tagged_by_run += u64::from(t == run);
                }
            }
        }
        c.real_checksum = hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(c)
    }
}
