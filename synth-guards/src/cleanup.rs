//! Purging tagged rows: the library behind the `synth-cleanup` binary (feature `cleanup`).
//!
//! Only rows whose tag column is not NULL (and equals the run, when one is given) are ever
//! deleted: the condition is part of every `DELETE`, not only of the row selection. The run is
//! compared byte for byte (`COLLATE "C"` / `COLLATE BINARY`), whatever the tag column's
//! collation, so `r1` never matches `R1`.
//!
//! Each table is named once: a table listed twice (`products,public.products`; on SQLite also
//! `products,PRODUCTS`), or with one of its partitions, is refused. On PostgreSQL a table is
//! cleaned *with* its partitions and inheriting tables, as `DELETE FROM` the table reaches them
//! (a partitioned table's rows live in its partitions); so the foreign keys pointing at them,
//! and their triggers and rules, are read and checked as the table's own. A row is named by
//! `(tableoid, ctid)` (a ctid repeats across partitions); on SQLite by a name of the rowid that
//! no column hides, else by the primary key (`WITHOUT ROWID` tables).
//!
//! **A row is deleted only when no row references it.** The foreign keys pointing at the given
//! tables are read from the catalogs (PostgreSQL `pg_constraint`; SQLite
//! `pragma_foreign_key_list` of every table), from any table, listed or not. A tagged row that
//! some remaining row references is *held*: not deleted, counted and listed in the [`Report`]
//! with the rows that hold it. So a delete never fires an `ON DELETE CASCADE`, `SET NULL`,
//! `SET DEFAULT`, `RESTRICT` or `NO ACTION` action, and no other row is changed or deleted.
//! Holding propagates: children go before parents (by the foreign keys among the given tables),
//! so a child that is held stays and, in turn, holds its parent; rows of one table that
//! reference each other go leaves first, batch after batch. Tagged rows in a reference cycle,
//! or a row that references itself, are held by each other.
//!
//! The decision is made inside each batch, against the rows as they are then: on PostgreSQL the
//! batch locks its rows (`FOR UPDATE`, which a new referencing row would have to wait for) and
//! then deletes those that are still unreferenced. A dry run takes the same decisions, batch by
//! batch, in one read-only transaction, marking rows instead of deleting them, so it counts
//! exactly what a run on the same data deletes and holds. Tables with `DELETE` triggers (or
//! PostgreSQL `DELETE` rules) are refused unless [`CleanupOptions::allow_triggers`]. References
//! are compared as the foreign key compares them: on SQLite with the parent key's collation.
//!
//! The reading must see every reference: on PostgreSQL a referencing table whose row-level
//! security applies to the cleanup's role is refused (a hidden row would still be reached by
//! `ON DELETE CASCADE`, which ignores row-level security); run it as the table's owner or a
//! `BYPASSRLS` role. What the start-up checks read can change while the cleanup runs (a
//! migration adds a trigger, a foreign key, a partition): every batch first takes its table's
//! write lock (PostgreSQL `ROW EXCLUSIVE`, which such changes wait for; SQLite
//! `BEGIN IMMEDIATE`) and compares a fingerprint of triggers, rules, foreign keys, partitions
//! and row-level security (SQLite: the schema version) with the one taken at start
//! (PostgreSQL: again before committing, as attaching a partition does not wait for that lock);
//! a change stops the cleanup with
//! [`CleanupError::SchemaChanged`], this batch undone, so the next run checks the new schema.
//! That includes a trigger added after [`CleanupOptions::allow_triggers`] let the existing ones
//! through.
//!
//! Rows go in batches, each its own short transaction with a lock timeout, so production tables
//! are never held for long and a run killed at any point is finished by running it again. A
//! table without the tag column is an error before anything is deleted.
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
//! println!("{} rows would go, {} are held", report.total_rows(), report.total_held());
//! assert_eq!(report.fully_purged(), report.total_held() == 0);
//! # Ok(()) }
//! ```

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    time::{Duration, Instant},
};

use sqlx::{AssertSqlSafe, Connection, PgConnection, Row, SqliteConnection, sqlite::SqliteConnectOptions};
use synth_ctx::RunId;

use crate::db::{Ident, InvalidIdentifier, TAG_COLUMN};

/// How many held rows of one table the report lists (all are counted).
pub const HELD_LISTED: usize = 20;

/// How many holders of one held row the report lists.
pub const HOLDERS_LISTED: usize = 5;

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
    /// Delete from tables that have `DELETE` triggers (default false: such a table is refused,
    /// because a trigger can change rows this cleanup cannot see).
    pub allow_triggers: bool,
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
            allow_triggers: false,
        }
    }
}

/// What a foreign key does to the referencing rows when the referenced row is deleted. The
/// cleanup never lets any of them happen (a referenced row is held); the report names it so you
/// can see what deleting the row would have done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnDelete {
    /// `NO ACTION`: the delete fails (at the end of the statement).
    NoAction,
    /// `RESTRICT`: the delete fails.
    Restrict,
    /// `CASCADE`: the referencing row is deleted too.
    Cascade,
    /// `SET NULL`: the referencing row is changed.
    SetNull,
    /// `SET DEFAULT`: the referencing row is changed.
    SetDefault,
}

impl OnDelete {
    /// The SQL spelling, e.g. `SET NULL`.
    pub fn as_sql(self) -> &'static str {
        match self {
            OnDelete::NoAction => "NO ACTION",
            OnDelete::Restrict => "RESTRICT",
            OnDelete::Cascade => "CASCADE",
            OnDelete::SetNull => "SET NULL",
            OnDelete::SetDefault => "SET DEFAULT",
        }
    }

    /// PostgreSQL's `pg_constraint.confdeltype`.
    fn from_pg(code: &str) -> Option<Self> {
        match code {
            "a" => Some(OnDelete::NoAction),
            "r" => Some(OnDelete::Restrict),
            "c" => Some(OnDelete::Cascade),
            "n" => Some(OnDelete::SetNull),
            "d" => Some(OnDelete::SetDefault),
            _ => None,
        }
    }

    /// SQLite's `pragma_foreign_key_list.on_delete`.
    fn from_sqlite(action: &str) -> Option<Self> {
        [OnDelete::NoAction, OnDelete::Restrict, OnDelete::Cascade, OnDelete::SetNull, OnDelete::SetDefault]
            .into_iter()
            .find(|a| a.as_sql().eq_ignore_ascii_case(action))
    }
}

impl fmt::Display for OnDelete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_sql())
    }
}

/// A row that references a held row, so the held row stays.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The referencing table.
    pub table: String,
    /// Its key: primary key values, or the row id (`ctid` / `rowid`) in a table without one.
    pub key: String,
    /// The foreign key (PostgreSQL: the constraint name; SQLite: `table(columns)`).
    pub constraint: String,
    /// What deleting the held row would have done to this row.
    pub on_delete: OnDelete,
}

/// A tagged row that was not deleted (in a dry run: would not be) because other rows reference
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeldRow {
    /// Its key: primary key values, or the row id (`ctid` / `rowid`) in a table without one.
    pub key: String,
    /// Rows that reference it (at most [`HOLDERS_LISTED`]).
    pub held_by: Vec<Holder>,
}

/// What happened to one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableReport {
    /// The table.
    pub table: String,
    /// Rows deleted (or, in a dry run, that would be).
    pub rows: u64,
    /// Tagged rows held (left in place) because other rows reference them.
    pub held: u64,
    /// Some of the held rows (at most [`HELD_LISTED`]) and what holds them.
    pub held_rows: Vec<HeldRow>,
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

    /// Held rows over all tables.
    pub fn total_held(&self) -> u64 {
        self.tables.iter().map(|t| t.held).sum()
    }

    /// Whether every selected row went (would go): nothing was held.
    pub fn fully_purged(&self) -> bool {
        self.total_held() == 0
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
    #[error("no table given: name the tables to clean")]
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
    /// Two entries name the same table (`products,public.products`; on SQLite also
    /// `products,PRODUCTS`), or one is a partition or inheriting table of the other, so its rows
    /// would be cleaned twice, the second time by a pass that does not know its references.
    #[error(
        "`{table}` names the same table as `{first}` (or one of its partitions or inheriting tables); nothing was deleted (list each table once: cleaning `{first}` covers its partitions and inheriting tables)"
    )]
    DuplicateTable {
        /// The later entry.
        table: String,
        /// The earlier entry it repeats.
        first: String,
    },
    /// PostgreSQL: row-level security hides rows of a referencing table from this role, so the
    /// cleanup cannot see every reference, while a foreign key's `ON DELETE` action (which
    /// ignores row-level security) would still reach the hidden rows.
    #[error(
        "table `{table}` references `{referenced}` and has row-level security that applies to this role, so synth-cleanup cannot see every referencing row; nothing was deleted (run it as the owner of `{table}` (without FORCE ROW LEVEL SECURITY) or as a role with BYPASSRLS)"
    )]
    RowLevelSecurity {
        /// The referencing table.
        table: String,
        /// The table to clean that it references.
        referenced: String,
    },
    /// The triggers, rules, foreign keys, partitions or row-level security of the tables changed
    /// while the cleanup ran (e.g. a migration added a `DELETE` trigger): its start-up checks no
    /// longer hold, so it stopped before the next batch.
    #[error(
        "the schema of `{table}` (its triggers, rules, foreign keys, partitions or row-level security) changed during the cleanup; stopped before the next batch ({deleted} rows deleted so far; run again to check the new schema and finish)"
    )]
    SchemaChanged {
        /// The table being cleaned.
        table: String,
        /// Rows deleted before stopping, over all tables.
        deleted: u64,
    },
    /// PostgreSQL: the name is a view, foreign table or other relation, not a table: a `DELETE`
    /// through it reaches rows (of its base table, or of another server) whose foreign keys and
    /// triggers the cleanup would not read.
    #[error(
        "`{table}` is a {kind}, not a table: deleting through it would reach rows whose foreign keys and triggers synth-cleanup does not read; nothing was deleted (list the table itself)"
    )]
    NotATable {
        /// The name given.
        table: String,
        /// What it is, as people call it (`view`, `foreign table`, …).
        kind: &'static str,
    },
    /// SQLite: a table without a primary key whose columns are named `rowid`, `_rowid_` and
    /// `oid`, so no name reaches its row id: its rows cannot be told apart safely.
    #[error(
        "table `{table}` has no primary key and columns named rowid, _rowid_ and oid hide its row id, so synth-cleanup cannot name one row; nothing was deleted (add a primary key)"
    )]
    NoRowIdentity {
        /// The table.
        table: String,
    },
    /// The tables' foreign keys form a cycle, so there is no children-first order.
    #[error("the foreign keys among {tables:?} form a cycle: there is no order that deletes children first")]
    ForeignKeyCycle {
        /// The tables in the cycle.
        tables: Vec<String>,
    },
    /// A table to clean has a `DELETE` trigger (or PostgreSQL rule), which could change rows
    /// the cleanup cannot see.
    #[error(
        "table `{table}` has the DELETE trigger `{trigger}`, which could change or delete other rows; nothing was deleted (check what it does, then pass --allow-triggers / CleanupOptions::allow_triggers)"
    )]
    DeleteTrigger {
        /// The table.
        table: String,
        /// The trigger (or rule).
        trigger: String,
    },
    /// The cleanup may not read a table whose rows reference the rows to delete, so it cannot
    /// tell whether they are referenced.
    #[error(
        "table `{table}` references `{referenced}`, but this role may not read it (SELECT), so synth-cleanup cannot tell which rows of `{referenced}` are referenced; nothing was deleted (GRANT SELECT ON {table} TO the cleanup's role)"
    )]
    CannotReadReferences {
        /// The referencing table.
        table: String,
        /// The table to clean that it references.
        referenced: String,
    },
    /// PostgreSQL: a table that other tables reference has its batches locked before the
    /// decision (`SELECT … FOR UPDATE`), which needs the UPDATE privilege.
    #[error(
        "table `{table}` is referenced by other tables, so synth-cleanup locks a batch's rows (SELECT ... FOR UPDATE) before deciding which are unreferenced, and that needs the UPDATE privilege; nothing was deleted (GRANT UPDATE ON {table} TO the cleanup's role)"
    )]
    CannotLockRows {
        /// The table.
        table: String,
    },
    /// The catalogs describe a foreign key this cleanup does not understand.
    #[error(
        "foreign key `{constraint}` has the ON DELETE action `{action}`, which synth-cleanup does not know; nothing was deleted"
    )]
    UnknownForeignKeyAction {
        /// The foreign key.
        constraint: String,
        /// The action as the catalog spells it.
        action: String,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Postgres,
    Sqlite,
}

fn backend(url: &str) -> Result<Dialect, CleanupError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Dialect::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(Dialect::Sqlite)
    } else {
        Err(CleanupError::UnsupportedUrl)
    }
}

/// A table as SQL text and as people read it.
#[derive(Clone, Debug)]
struct TableSql {
    /// Quoted by us or by the catalog (`quote_ident`, `regclass`): safe to paste into SQL. A
    /// PostgreSQL referencing table that is not partitioned is `ONLY …`: foreign keys are not
    /// inherited, so the rows of its inheriting tables reference nothing through its keys.
    sql: String,
    /// For the report.
    label: String,
    /// Quoted primary key columns; empty when the table has none (the row id stands in).
    key: Vec<String>,
    /// SQLite: what names one row, quoted: a name of the row id that no column hides, or (a
    /// `WITHOUT ROWID` table, or one whose columns hide every name of the row id) the primary
    /// key columns. PostgreSQL: empty, `(tableoid, ctid)` names a row (a ctid alone repeats
    /// across partitions and inheriting tables).
    row_id: Vec<String>,
    /// PostgreSQL: the table has partitions or inheriting tables, so a ctid alone does not name
    /// one of its rows (without them it does, and the batch's plan stays a plain TID scan).
    descendants: bool,
}

/// A foreign key whose referenced table is one of the tables to clean (or one of its partitions
/// or inheriting tables).
#[derive(Clone, Debug)]
struct Reference {
    name: String,
    child: TableSql,
    /// The referencing table's index among the tables to clean, if it is one of them (or one of
    /// their partitions or inheriting tables).
    child_listed: Option<usize>,
    /// Quoted, in the order of `parent_cols`.
    child_cols: Vec<String>,
    /// Index among the tables to clean.
    parent: usize,
    parent_cols: Vec<String>,
    /// PostgreSQL: when the key references a partition or inheriting table of the table to
    /// clean, the relations (it and its own descendants) whose rows it references.
    parent_relations: Option<Vec<i64>>,
    on_delete: OnDelete,
}

/// What the catalogs say about the tables to clean (in the order given) and every foreign key
/// that points at them.
#[derive(Debug)]
struct Schema {
    tables: Vec<TableSql>,
    references: Vec<Reference>,
    /// A digest of everything the start-up checks read (triggers, rules, foreign keys,
    /// partitions, row-level security; SQLite: the schema version), compared in every batch.
    fingerprint: String,
    /// PostgreSQL: the oids of the tables to clean, for the fingerprint.
    oids: Vec<i64>,
}

impl Schema {
    /// Children first among the tables to clean, so that a child held by a real row is still
    /// there, holding its parent, when the parent's turn comes.
    fn order(&self, idents: &[Ident]) -> Result<Vec<usize>, CleanupError> {
        let edges: Vec<(usize, usize)> =
            self.references.iter().filter_map(|r| r.child_listed.map(|c| (c, r.parent))).collect();
        children_first(idents, &edges)
    }

    fn referencing(&self, table: usize) -> impl Iterator<Item = (usize, &Reference)> {
        self.references.iter().enumerate().filter(move |(_, r)| r.parent == table)
    }

    /// Rows of this table reference each other: deleting leaves can free more rows of it.
    fn self_referencing(&self, table: usize) -> bool {
        self.referencing(table).any(|(_, r)| r.child_listed == Some(table))
    }
}

/// Quotes an SQLite identifier read from its catalog.
fn quote_sqlite(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL of one cleanup: the single place where what may be deleted is decided, for the real
/// run and for the dry run alike.
struct Statements<'a> {
    dialect: Dialect,
    schema: &'a Schema,
    column: &'a Ident,
    selector: &'a Selector,
    dry_run: bool,
}

impl Statements<'_> {
    fn param(&self, n: u8) -> String {
        match self.dialect {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite => format!("?{n}"),
        }
    }

    /// The parameter after the run's (`n` when there is no run, whose parameter `n` would be).
    fn after_run(&self, n: u8) -> u8 {
        match self.selector {
            Selector::Run(_) => n + 1,
            Selector::AllSynthetic => n,
        }
    }

    /// SQLite: what names a row of the table: one value, or the key's values in one text.
    fn sqlite_row_id(&self, table: usize, alias: &str) -> String {
        match self.schema.tables[table].row_id.as_slice() {
            [one] => format!("{alias}.{one}"),
            many => {
                many.iter().map(|c| format!("quote({alias}.{c})")).collect::<Vec<_>>().join(" || ',' || ")
            }
        }
    }

    /// SQLite: the row id columns as a row value, for `… IN (SELECT …)`.
    fn sqlite_row_tuple(&self, table: usize, alias: &str) -> String {
        let cols: Vec<String> =
            self.schema.tables[table].row_id.iter().map(|c| format!("{alias}.{c}")).collect();
        match cols.as_slice() {
            [one] => one.clone(),
            many => format!("({})", many.join(", ")),
        }
    }

    /// Where a dry run marks the rows it would delete (a temporary table, so the dry run writes
    /// nothing that anyone else can see).
    fn marked(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => "pg_temp.synth_cleanup_marked",
            Dialect::Sqlite => "temp.synth_cleanup_marked",
        }
    }

    fn create_marked(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => {
                "CREATE TEMP TABLE IF NOT EXISTS synth_cleanup_marked (tbl INTEGER NOT NULL, rel oid NOT NULL, id tid NOT NULL, PRIMARY KEY (tbl, rel, id))"
            }
            // No type: the row id or a key's values, kept as they are.
            Dialect::Sqlite => {
                "CREATE TEMP TABLE IF NOT EXISTS synth_cleanup_marked (tbl INTEGER NOT NULL, id NOT NULL, PRIMARY KEY (tbl, id))"
            }
        }
    }

    /// The selected tagged rows; the run is parameter `n`. The tag is compared byte for byte
    /// (`COLLATE "C"` / `COLLATE BINARY`), whatever the column's collation: a case-insensitive
    /// tag column must not make run `r1` match run `R1`. The comparison with the column's own
    /// collation stays in front of it, so an index on the tag column is still used.
    fn tagged(&self, alias: &str, n: u8) -> String {
        let c = format!("{alias}.{}", self.column.quoted());
        let bytewise = match self.dialect {
            Dialect::Postgres => "\"C\"",
            Dialect::Sqlite => "BINARY",
        };
        match self.selector {
            Selector::Run(_) => {
                let p = self.param(n);
                format!("{c} IS NOT NULL AND {c} = {p} AND {c} = {p} COLLATE {bytewise}")
            }
            Selector::AllSynthetic => format!("{c} IS NOT NULL"),
        }
    }

    /// ` AND` the row is still there: in a dry run, a marked row counts as deleted.
    fn present(&self, alias: &str, table: usize) -> String {
        if !self.dry_run {
            return String::new();
        }
        match self.dialect {
            Dialect::Postgres => format!(
                " AND NOT EXISTS (SELECT 1 FROM {} AS m WHERE m.tbl = {table} AND m.rel = {alias}.tableoid AND m.id = {alias}.ctid)",
                self.marked()
            ),
            Dialect::Sqlite => format!(
                " AND NOT EXISTS (SELECT 1 FROM {} AS m WHERE m.tbl = {table} AND m.id = {})",
                self.marked(),
                self.sqlite_row_id(table, alias)
            ),
        }
    }

    /// The referencing row `child` references the row `parent`. The parent's column is on the
    /// left: SQLite compares with the left operand's collation, and a foreign key compares with
    /// the parent key's (a `COLLATE NOCASE` key is referenced by `ABC` as by `abc`).
    fn matches(&self, reference: &Reference, child: &str, parent: &str) -> String {
        let pairs = reference.child_cols.iter().zip(&reference.parent_cols);
        let mut sql =
            pairs.map(|(c, p)| format!("{parent}.{p} = {child}.{c}")).collect::<Vec<_>>().join(" AND ");
        if let Some(relations) = &reference.parent_relations {
            let oids = relations.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            sql.push_str(&format!(" AND {parent}.tableoid = ANY('{{{oids}}}'::oid[])"));
        }
        sql
    }

    /// ` AND` no remaining row, of any table, references the row: the decision. Deleting such a
    /// row fires no `ON DELETE` action at all, so no other row can change.
    fn unreferenced(&self, table: usize, alias: &str) -> String {
        let mut sql = String::new();
        for (i, r) in self.schema.referencing(table) {
            let holder = format!("h{i}");
            let present = r.child_listed.map(|c| self.present(&holder, c)).unwrap_or_default();
            sql.push_str(&format!(
                " AND NOT EXISTS (SELECT 1 FROM {} AS {holder} WHERE {}{present})",
                r.child.sql,
                self.matches(r, &holder, alias)
            ));
        }
        sql
    }

    fn key(&self, table: &TableSql, alias: &str) -> String {
        match (self.dialect, table.key.as_slice()) {
            (Dialect::Postgres, []) => format!("{alias}.ctid::text"),
            (Dialect::Postgres, [one]) => format!("({alias}.{one})::text"),
            (Dialect::Postgres, many) => {
                let cols = many.iter().map(|c| format!("{alias}.{c}")).collect::<Vec<_>>().join(", ");
                format!("ROW({cols})::text")
            }
            (Dialect::Sqlite, []) => match table.row_id.as_slice() {
                [one] => format!("CAST({alias}.{one} AS TEXT)"),
                _ => "'?'".to_owned(),
            },
            (Dialect::Sqlite, [one]) => format!("CAST({alias}.{one} AS TEXT)"),
            (Dialect::Sqlite, many) => {
                let cols = many
                    .iter()
                    .map(|c| format!("quote({alias}.{c})"))
                    .collect::<Vec<_>>()
                    .join(" || ',' || ");
                format!("'(' || {cols} || ')'")
            }
        }
    }

    fn table(&self, table: usize) -> &str {
        &self.schema.tables[table].sql
    }

    /// Tagged rows of the table, before anything happens (run: `$1`).
    fn count_tagged(&self, table: usize) -> String {
        format!("SELECT count(*) FROM {} AS r WHERE {}", self.table(table), self.tagged("r", 1))
    }

    /// Tagged rows still there after the table's batches: the held ones (run: `$1`).
    fn count_held(&self, table: usize) -> String {
        format!(
            "SELECT count(*) FROM {} AS r WHERE {}{}",
            self.table(table),
            self.tagged("r", 1),
            self.present("r", table)
        )
    }

    /// Held rows of the table and what holds them, through one foreign key (run: `$1`).
    fn list_held(&self, table: usize, reference: &Reference) -> String {
        let present_holder = reference.child_listed.map(|c| self.present("h", c)).unwrap_or_default();
        format!(
            "SELECT {}, {} FROM {} AS r JOIN {} AS h ON {} WHERE {}{}{present_holder} LIMIT {}",
            self.key(&self.schema.tables[table], "r"),
            self.key(&reference.child, "h"),
            self.table(table),
            reference.child.sql,
            self.matches(reference, "h", "r"),
            self.tagged("r", 1),
            self.present("r", table),
            HELD_LISTED * HOLDERS_LISTED
        )
    }

    /// Dry run: marks a batch of the rows the real run would delete (limit `$1`, run `$2`).
    fn mark_batch(&self, table: usize) -> String {
        let (columns, row) = match self.dialect {
            Dialect::Postgres => ("tbl, rel, id", "r.tableoid, r.ctid".to_owned()),
            Dialect::Sqlite => ("tbl, id", self.sqlite_row_id(table, "r")),
        };
        format!(
            "INSERT INTO {} ({columns}) SELECT {table}, {row} FROM {} AS r WHERE {}{}{} LIMIT {}",
            self.marked(),
            self.table(table),
            self.tagged("r", 2),
            self.present("r", table),
            self.unreferenced(table, "r"),
            self.param(1)
        )
    }

    /// PostgreSQL, a table nothing references: one statement per batch (limit `$1`, run `$2`).
    /// The tag condition is repeated on the DELETE itself: whatever the inner selection
    /// returns, an untagged row (or another run's) can never match. Rows are named by
    /// `(tableoid, ctid)`, as a ctid repeats across partitions; the ctid alone is compared too,
    /// so each partition is read by a TID scan.
    fn pg_delete_batch(&self, table: usize) -> String {
        if !self.schema.tables[table].descendants {
            return format!(
                "DELETE FROM {t} AS r WHERE r.ctid = ANY(ARRAY(SELECT s.ctid FROM {t} AS s WHERE {} LIMIT $1)) AND {}",
                self.tagged("s", 2),
                self.tagged("r", 2),
                t = self.table(table)
            );
        }
        format!(
            "WITH s AS MATERIALIZED (SELECT s.tableoid, s.ctid FROM {t} AS s WHERE {} LIMIT $1)
             DELETE FROM {t} AS r WHERE r.ctid = ANY(ARRAY(SELECT ctid FROM s))
               AND (r.tableoid, r.ctid) IN (SELECT tableoid, ctid FROM s) AND {}",
            self.tagged("s", 2),
            self.tagged("r", 2),
            t = self.table(table)
        )
    }

    /// PostgreSQL, a referenced table, step 1: lock a batch of unreferenced rows (limit `$1`,
    /// run `$2`). Once locked, a new reference to them has to wait for this transaction.
    fn pg_lock_batch(&self, table: usize) -> String {
        format!(
            "SELECT r.ctid::text, r.tableoid::int8 FROM {} AS r WHERE {}{} LIMIT $1 FOR UPDATE OF r",
            self.table(table),
            self.tagged("r", 2),
            self.unreferenced(table, "r")
        )
    }

    /// Step 2: delete the locked rows that are still unreferenced, seen with a snapshot taken
    /// after the locks (row ids `$1`, run `$2`, the row ids' relations next when the table has
    /// descendants).
    fn pg_delete_locked(&self, table: usize) -> String {
        if !self.schema.tables[table].descendants {
            return format!(
                "DELETE FROM {} AS r WHERE r.ctid = ANY($1::text[]::tid[]) AND {}{}",
                self.table(table),
                self.tagged("r", 2),
                self.unreferenced(table, "r")
            );
        }
        format!(
            "DELETE FROM {} AS r WHERE r.ctid = ANY($1::text[]::tid[])
               AND (r.ctid::text, r.tableoid::int8) IN (SELECT * FROM unnest($1::text[], ${}::int8[]))
               AND {}{}",
            self.table(table),
            self.after_run(2),
            self.tagged("r", 2),
            self.unreferenced(table, "r")
        )
    }

    /// SQLite: one statement per batch (limit `?1`, run `?2`). SQLite runs it alone, so the
    /// decision and the delete see the same rows; the decision is repeated on the outer DELETE
    /// all the same, so that whatever the selection returns, only a tagged, unreferenced row
    /// can match.
    fn sqlite_delete_batch(&self, table: usize) -> String {
        format!(
            "DELETE FROM {t} AS r WHERE {} IN (SELECT {} FROM {t} AS s WHERE {}{} LIMIT ?1) AND {}{}",
            self.sqlite_row_tuple(table, "r"),
            self.schema.tables[table].row_id.iter().map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", "),
            self.tagged("s", 2),
            self.unreferenced(table, "s"),
            self.tagged("r", 2),
            self.unreferenced(table, "r"),
            t = self.table(table)
        )
    }
}

/// Runs a cleanup; see the [module docs](self).
pub async fn cleanup(
    database_url: &str,
    options: &CleanupOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Report, CleanupError> {
    let dialect = backend(database_url)?;
    if options.tables.is_empty() {
        return Err(CleanupError::NoTables);
    }
    let tables = options.tables.iter().map(|t| Ident::new(t)).collect::<Result<Vec<_>, _>>()?;
    let column = Ident::new(&options.tag_column)?;
    let connect_err = |source| CleanupError::Database { table: None, deleted: 0, source };
    let started = Instant::now();
    let mut report = Report { dry_run: options.dry_run, ..Report::default() };
    match dialect {
        Dialect::Postgres => {
            let mut conn = PgConnection::connect(database_url).await.map_err(connect_err)?;
            let schema = pg::read_schema(&mut conn, &tables, &column, options).await?;
            let order = schema.order(&tables)?;
            let sql = Statements {
                dialect,
                schema: &schema,
                column: &column,
                selector: &options.selector,
                dry_run: options.dry_run,
            };
            if options.dry_run {
                pg::dry_run(&mut conn, &sql, &order, options, &mut report, progress).await?;
            } else {
                for &table in &order {
                    let t = pg::clean_table(&mut conn, &sql, table, options, report.total_rows(), progress)
                        .await?;
                    report.tables.push(t);
                }
            }
        }
        Dialect::Sqlite => {
            // Foreign keys on (sqlx's default too, said out loud). The decision reads the
            // declarations, so it holds the same rows either way; enforcement adds SQLite's own
            // refusal of a delete that would break a RESTRICT / NO ACTION reference.
            let connect = SqliteConnectOptions::from_str(database_url)
                .map_err(connect_err)?
                .foreign_keys(true)
                .busy_timeout(options.lock_timeout);
            let mut conn = SqliteConnection::connect_with(&connect).await.map_err(connect_err)?;
            let schema = sqlite::read_schema(&mut conn, &tables, &column, options.allow_triggers).await?;
            let order = schema.order(&tables)?;
            let sql = Statements {
                dialect,
                schema: &schema,
                column: &column,
                selector: &options.selector,
                dry_run: options.dry_run,
            };
            if options.dry_run {
                sqlx::query(AssertSqlSafe(sql.create_marked()))
                    .execute(&mut conn)
                    .await
                    .map_err(connect_err)?;
            }
            for &table in &order {
                let t = sqlite::clean_table(&mut conn, &sql, table, options, report.total_rows(), progress)
                    .await?;
                report.tables.push(t);
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn run_text(selector: &Selector) -> Option<String> {
    match selector {
        Selector::Run(r) => Some(r.to_string()),
        Selector::AllSynthetic => None,
    }
}

/// Orders table indices children first, given `edges` (child, parent); stable otherwise.
fn children_first(tables: &[Ident], edges: &[(usize, usize)]) -> Result<Vec<usize>, CleanupError> {
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
        order.push(next);
        for &(child, parent) in edges {
            if child == next && parent != child {
                remaining_children[parent] -= 1;
            }
        }
    }
    Ok(order)
}

/// Groups (held key, holder key, reference) rows into the report's listing.
fn add_held(listing: &mut Vec<HeldRow>, held: String, holder: String, reference: &Reference) {
    let holder = Holder {
        table: reference.child.label.clone(),
        key: holder,
        constraint: reference.name.clone(),
        on_delete: reference.on_delete,
    };
    if let Some(row) = listing.iter_mut().find(|r| r.key == held) {
        if row.held_by.len() < HOLDERS_LISTED && !row.held_by.contains(&holder) {
            row.held_by.push(holder);
        }
    } else if listing.len() < HELD_LISTED {
        listing.push(HeldRow { key: held, held_by: vec![holder] });
    }
}

/// Whether an SQLite trigger may fire on DELETE. SQLite keeps only the trigger's SQL, so this
/// errs on the side of refusing: a trigger whose SQL has the word DELETE anywhere (its event, but
/// also its name or body) counts. Every DELETE trigger has that word, so none slips through.
fn is_sqlite_delete_trigger(sql: &str) -> bool {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|w| w.eq_ignore_ascii_case("delete"))
}

mod pg {
    use super::*;

    fn db_err(table: Option<&str>, deleted: u64) -> impl FnOnce(sqlx::Error) -> CleanupError {
        let table = table.map(str::to_owned);
        move |source| CleanupError::Database { table, deleted, source }
    }

    /// Quoted primary key columns of a table, in key order.
    async fn primary_key(conn: &mut PgConnection, oid: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT ARRAY(SELECT quote_ident(a.attname) FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, pos)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE i.indrelid = $1::int8::oid AND i.indisprimary ORDER BY k.pos)",
        )
        .bind(oid)
        .fetch_one(conn)
        .await
    }

    /// The relations whose rows a `DELETE FROM` each table reaches: it, its partitions and its
    /// inheriting tables, at any depth (`root`, `relation`).
    const FAMILY: &str = "WITH RECURSIVE d(root, rel) AS (
             SELECT r, r FROM unnest($1::int8[]) AS r
             UNION SELECT d.root, i.inhrelid::int8 FROM d JOIN pg_inherits i ON i.inhparent::int8 = d.rel)";

    /// A digest of what the start-up checks read: the relations deleting reaches, their
    /// triggers and rules, the foreign keys pointing at them, and whether row-level security
    /// applies to the referencing tables. Compared in every batch, after the batch has locked
    /// the table (a new trigger or foreign key needs a lock that conflicts with it).
    async fn fingerprint(conn: &mut PgConnection, oids: &[i64]) -> Result<String, sqlx::Error> {
        let sql = format!(
            "{FAMILY}, f AS (SELECT DISTINCT rel FROM d)
             SELECT md5(concat_ws('|',
               (SELECT string_agg(rel::text, ',' ORDER BY rel) FROM f),
               (SELECT string_agg(t.oid::text || ':' || t.tgtype::text || ':' || t.tgenabled::text, ',' ORDER BY t.oid)
                  FROM pg_trigger t WHERE t.tgrelid::int8 IN (SELECT rel FROM f) AND NOT t.tgisinternal),
               (SELECT string_agg(w.oid::text || ':' || w.ev_type::text || ':' || w.ev_enabled::text, ',' ORDER BY w.oid)
                  FROM pg_rewrite w WHERE w.ev_class::int8 IN (SELECT rel FROM f)),
               (SELECT string_agg(c.oid::text || ':' || c.confdeltype::text || ':' || row_security_active(c.conrelid)::text, ',' ORDER BY c.oid)
                  FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid::int8 IN (SELECT rel FROM f))))"
        );
        sqlx::query_scalar(AssertSqlSafe(sql)).bind(oids).fetch_one(conn).await
    }

    /// Checks the tables and reads every foreign key that points at them (or at their
    /// partitions and inheriting tables), from any table.
    pub(super) async fn read_schema(
        conn: &mut PgConnection,
        tables: &[Ident],
        column: &Ident,
        options: &CleanupOptions,
    ) -> Result<Schema, CleanupError> {
        let mut oids: Vec<i64> = Vec::with_capacity(tables.len());
        for table in tables {
            let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
                .bind(table.quoted())
                .fetch_one(&mut *conn)
                .await
                .map_err(db_err(Some(table.as_str()), 0))?;
            let oid = oid.ok_or_else(|| CleanupError::MissingTable { table: table.to_string() })?;
            let relkind: String =
                sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = $1::int8::oid")
                    .bind(oid)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(db_err(Some(table.as_str()), 0))?;
            // Ordinary and partitioned tables only.
            let kind = match relkind.as_str() {
                "r" | "p" => None,
                "v" => Some("view"),
                "m" => Some("materialized view"),
                "f" => Some("foreign table"),
                "S" => Some("sequence"),
                "i" | "I" => Some("index"),
                "c" => Some("composite type"),
                _ => Some("relation of an unknown kind"),
            };
            if let Some(kind) = kind {
                return Err(CleanupError::NotATable { table: table.to_string(), kind });
            }
            oids.push(oid);
        }
        // Taken before any check: a change after it is caught by the first batch.
        let fingerprint = fingerprint(conn, &oids).await.map_err(db_err(None, 0))?;

        // Each table with what deleting from it reaches. A table named twice, or named with one
        // of its partitions, would be cleaned twice: refused, as its second pass would not know
        // the references the first pass was given.
        let family_rows: Vec<(i64, i64)> =
            sqlx::query_as(AssertSqlSafe(format!("{FAMILY} SELECT DISTINCT root, rel FROM d")))
                .bind(&oids)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err(None, 0))?;
        let families: Vec<Vec<i64>> = oids
            .iter()
            .map(|&o| family_rows.iter().filter(|(root, _)| *root == o).map(|&(_, rel)| rel).collect())
            .collect();
        for (i, table) in tables.iter().enumerate() {
            if let Some(first) =
                (0..i).find(|&j| families[j].contains(&oids[i]) || families[i].contains(&oids[j]))
            {
                return Err(CleanupError::DuplicateTable {
                    table: table.to_string(),
                    first: tables[first].to_string(),
                });
            }
        }
        let family_of = |rel: i64| families.iter().position(|f| f.contains(&rel));
        let all: Vec<i64> = families.concat();

        let mut listed = Vec::with_capacity(tables.len());
        for (table, &oid) in tables.iter().zip(&oids) {
            let err = || db_err(Some(table.as_str()), 0);
            let has_column: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::int8::oid AND attname = $2 AND NOT attisdropped)",
            )
            .bind(oid)
            .bind(column.as_str())
            .fetch_one(&mut *conn)
            .await
            .map_err(err())?;
            if !has_column {
                return Err(CleanupError::MissingTagColumn {
                    table: table.to_string(),
                    column: column.to_string(),
                });
            }
            let key = primary_key(conn, oid).await.map_err(err())?;
            listed.push(TableSql {
                sql: table.quoted().to_owned(),
                label: table.to_string(),
                key,
                row_id: Vec::new(),
                descendants: families[listed.len()].len() > 1,
            });
        }

        if !options.allow_triggers {
            // TRIGGER_TYPE_DELETE is bit 3 of tgtype; a DELETE rule (ev_type '4') rewrites the
            // DELETE itself, so it is refused alike. Partitions and inheriting tables count: a
            // DELETE through the table fires their triggers.
            let trigger: Option<(String, String)> = sqlx::query_as(
                "SELECT tgrelid::regclass::text, tgname::text FROM pg_trigger
                   WHERE tgrelid::int8 = ANY($1) AND NOT tgisinternal AND (tgtype::int & 8) <> 0
                 UNION ALL
                 SELECT ev_class::regclass::text, rulename::text FROM pg_rewrite
                   WHERE ev_class::int8 = ANY($1) AND ev_type = '4'
                 ORDER BY 1, 2 LIMIT 1",
            )
            .bind(&all)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err(None, 0))?;
            if let Some((table, trigger)) = trigger {
                return Err(CleanupError::DeleteTrigger { table, trigger });
            }
        }

        // A key of a partitioned referencing table is also kept, as a clone, on each of its
        // partitions, and a key referencing a partitioned table has a clone per referenced
        // partition: a clone whose original is read already adds nothing.
        let rows = sqlx::query(
            "SELECT c.conname::text, c.conrelid::int8, c.conrelid::regclass::text, c.confrelid::int8, c.confdeltype::text,
                ARRAY(SELECT quote_ident(a.attname) FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, pos)
                      JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum ORDER BY k.pos),
                ARRAY(SELECT quote_ident(a.attname) FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, pos)
                      JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum ORDER BY k.pos),
                (SELECT relkind::text FROM pg_class WHERE oid = c.conrelid),
                row_security_active(c.conrelid),
                (SELECT relkind::text FROM pg_class WHERE oid = c.confrelid)
             FROM pg_constraint c
             WHERE c.contype = 'f' AND c.confrelid::int8 = ANY($1)
               AND NOT (c.conparentid <> 0 AND EXISTS (SELECT 1 FROM pg_constraint o
                        WHERE o.oid = c.conparentid AND o.confrelid::int8 = ANY($1)))
             ORDER BY c.conrelid, c.conname",
        )
        .bind(&all)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(None, 0))?;
        let mut child_oids = Vec::with_capacity(rows.len());
        let mut keys: HashMap<i64, Vec<String>> =
            oids.iter().copied().zip(listed.iter().map(|t| t.key.clone())).collect();
        let mut references = Vec::with_capacity(rows.len());
        for row in rows {
            let get = |i: usize| row.try_get::<String, _>(i).map_err(db_err(None, 0));
            let name = get(0)?;
            let child_oid: i64 = row.try_get(1).map_err(db_err(None, 0))?;
            let parent_oid: i64 = row.try_get(3).map_err(db_err(None, 0))?;
            let action = get(4)?;
            let on_delete = OnDelete::from_pg(&action)
                .ok_or_else(|| CleanupError::UnknownForeignKeyAction { constraint: name.clone(), action })?;
            let Some(parent) = family_of(parent_oid) else { continue };
            let child_name = get(2)?;
            let rls: bool = row.try_get(8).map_err(db_err(None, 0))?;
            if rls {
                return Err(CleanupError::RowLevelSecurity {
                    table: child_name,
                    referenced: listed[parent].label.clone(),
                });
            }
            // Which rows of the family the key references: a key references its own table only
            // (ONLY: not that table's inheriting tables), or, when that is partitioned, its
            // partitions at any depth. Without the filter rows of other members with the same
            // key values would be held for nothing.
            let parent_partitioned = get(9)? == "p";
            let parent_relations =
                if families[parent].len() == 1 || (parent_partitioned && parent_oid == oids[parent]) {
                    None
                } else if !parent_partitioned {
                    Some(vec![parent_oid])
                } else {
                    let sub: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                        "{FAMILY} SELECT DISTINCT rel FROM d ORDER BY rel"
                    )))
                    .bind(vec![parent_oid])
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_err(None, 0))?;
                    Some(sub)
                };
            let key = match keys.get(&child_oid) {
                Some(key) => key.clone(),
                None => {
                    let key = primary_key(conn, child_oid).await.map_err(db_err(None, 0))?;
                    keys.insert(child_oid, key.clone());
                    key
                }
            };
            // Foreign keys are not inherited: the rows of an ordinary table's inheriting tables
            // reference nothing through this key. A partitioned table holds no rows of its own.
            let relkind = get(7)?;
            let sql = if relkind == "p" { child_name.clone() } else { format!("ONLY {child_name}") };
            child_oids.push(child_oid);
            references.push(Reference {
                name,
                child: TableSql { sql, label: child_name, key, row_id: Vec::new(), descendants: false },
                child_listed: family_of(child_oid),
                child_cols: row.try_get(5).map_err(db_err(None, 0))?,
                parent,
                parent_cols: row.try_get(6).map_err(db_err(None, 0))?,
                parent_relations,
                on_delete,
            });
        }
        check_privileges(conn, &listed, &oids, &references, &child_oids).await?;
        Ok(Schema { tables: listed, references, fingerprint, oids })
    }

    /// Missing privileges would otherwise surface as a permission error in the middle of the
    /// run; checked up front, they stop it before anything is deleted, saying what to grant.
    async fn check_privileges(
        conn: &mut PgConnection,
        listed: &[TableSql],
        oids: &[i64],
        references: &[Reference],
        child_oids: &[i64],
    ) -> Result<(), CleanupError> {
        let allowed = |oid: i64, privilege: &'static str| {
            sqlx::query_scalar::<_, bool>("SELECT has_table_privilege($1::int8::oid, $2)")
                .bind(oid)
                .bind(privilege)
        };
        for (r, &child) in references.iter().zip(child_oids) {
            if !allowed(child, "SELECT").fetch_one(&mut *conn).await.map_err(db_err(None, 0))? {
                return Err(CleanupError::CannotReadReferences {
                    table: r.child.label.clone(),
                    referenced: listed[r.parent].label.clone(),
                });
            }
        }
        // Checked in a dry run too, though it locks nothing: it rehearses the run, and a
        // rehearsal that passes where the run would refuse misleads.
        for (i, &oid) in oids.iter().enumerate() {
            let referenced = references.iter().any(|r| r.parent == i);
            if referenced && !allowed(oid, "UPDATE").fetch_one(&mut *conn).await.map_err(db_err(None, 0))? {
                return Err(CleanupError::CannotLockRows { table: listed[i].label.clone() });
            }
        }
        Ok(())
    }

    /// The dry run: every table's batches in one read-only transaction (the database itself
    /// guarantees that nothing changes), marking rows in a temporary table instead of deleting.
    pub(super) async fn dry_run(
        conn: &mut PgConnection,
        sql: &Statements<'_>,
        order: &[usize],
        options: &CleanupOptions,
        report: &mut Report,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<(), CleanupError> {
        sqlx::query(AssertSqlSafe(sql.create_marked())).execute(&mut *conn).await.map_err(db_err(None, 0))?;
        let mut tx = conn.begin().await.map_err(db_err(None, 0))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db_err(None, 0))?;
        // Reading takes no row locks, but a table lock held by a migration would keep the dry
        // run waiting (and everything queued behind it): give way as a batch would.
        let lock_timeout =
            format!("SET LOCAL lock_timeout = '{}ms'", options.lock_timeout.as_millis().max(1));
        sqlx::query(AssertSqlSafe(lock_timeout)).execute(&mut *tx).await.map_err(db_err(None, 0))?;
        for &table in order {
            let t = clean_table(&mut tx, sql, table, options, report.total_rows(), progress).await?;
            report.tables.push(t);
        }
        tx.rollback().await.map_err(db_err(None, 0))?;
        Ok(())
    }

    /// One batch: (rows selected, rows deleted or marked), or `None` when the schema changed
    /// since the start-up checks (nothing was deleted by this batch).
    async fn batch(
        conn: &mut PgConnection,
        sql: &Statements<'_>,
        table: usize,
        options: &CleanupOptions,
        run: &Option<String>,
    ) -> Result<Option<(u64, u64)>, sqlx::Error> {
        let limit = i64::from(options.batch_size);
        if sql.dry_run {
            let mut q = sqlx::query(AssertSqlSafe(sql.mark_batch(table))).bind(limit);
            if let Some(run) = run {
                q = q.bind(run.clone());
            }
            let n = q.execute(&mut *conn).await?.rows_affected();
            return Ok(Some((n, n)));
        }
        let mut tx = conn.begin().await?;
        let lock_timeout =
            format!("SET LOCAL lock_timeout = '{}ms'", options.lock_timeout.as_millis().max(1));
        sqlx::query(AssertSqlSafe(lock_timeout)).execute(&mut *tx).await?;
        // The DELETE's own lock, taken first (on the table with its partitions and inheriting
        // tables; ordinary writes do not wait for it): from here on no trigger, rule or foreign
        // key can be added to them until this batch commits, so the comparison below holds for
        // the delete that follows.
        let lock = format!("LOCK TABLE {} IN ROW EXCLUSIVE MODE", sql.table(table));
        sqlx::query(AssertSqlSafe(lock)).execute(&mut *tx).await?;
        if fingerprint(&mut tx, &sql.schema.oids).await? != sql.schema.fingerprint {
            tx.rollback().await?;
            return Ok(None);
        }
        let counts = if sql.schema.referencing(table).next().is_none() {
            let mut q = sqlx::query(AssertSqlSafe(sql.pg_delete_batch(table))).bind(limit);
            if let Some(run) = run {
                q = q.bind(run.clone());
            }
            let n = q.execute(&mut *tx).await?.rows_affected();
            (n, n)
        } else {
            let mut q =
                sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(sql.pg_lock_batch(table))).bind(limit);
            if let Some(run) = run {
                q = q.bind(run.clone());
            }
            let locked = q.fetch_all(&mut *tx).await?;
            if locked.is_empty() {
                (0, 0)
            } else {
                let selected = u64::try_from(locked.len()).unwrap_or(u64::MAX);
                let (ctids, relations): (Vec<String>, Vec<i64>) = locked.into_iter().unzip();
                let mut q = sqlx::query(AssertSqlSafe(sql.pg_delete_locked(table))).bind(ctids);
                if let Some(run) = run {
                    q = q.bind(run.clone());
                }
                if sql.schema.tables[table].descendants {
                    q = q.bind(relations);
                }
                (selected, q.execute(&mut *tx).await?.rows_affected())
            }
        };
        // Once more before committing: a partition attached meanwhile (ATTACH PARTITION does not
        // wait for the lock above) would have been reached by the delete; rolled back, its
        // triggers' work is undone with it.
        if fingerprint(&mut tx, &sql.schema.oids).await? != sql.schema.fingerprint {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(counts))
    }

    pub(super) async fn clean_table(
        conn: &mut PgConnection,
        sql: &Statements<'_>,
        table: usize,
        options: &CleanupOptions,
        deleted_before: u64,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<TableReport, CleanupError> {
        let started = Instant::now();
        let name = sql.schema.tables[table].label.clone();
        let mut report = TableReport { table: name.clone(), ..TableReport::default() };
        let run = run_text(sql.selector);

        let mut count = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.count_tagged(table)));
        if let Some(run) = &run {
            count = count.bind(run.clone());
        }
        let total = count.fetch_one(&mut *conn).await.map_err(db_err(Some(&name), deleted_before))?;
        progress(Progress::Counted { table: &name, rows: u64::try_from(total).unwrap_or(0) });

        let self_referencing = sql.schema.self_referencing(table);
        let mut retries = 0;
        loop {
            let batch_started = Instant::now();
            let (selected, n) = match batch(conn, sql, table, options, &run).await {
                Ok(Some(counts)) => counts,
                Ok(None) => {
                    return Err(CleanupError::SchemaChanged {
                        table: name,
                        deleted: deleted_before + report.rows,
                    });
                }
                Err(e) if !sql.dry_run && is_lock_timeout(&e) => {
                    retries += 1;
                    report.lock_retries += 1;
                    if retries > options.lock_retries {
                        return Err(CleanupError::LockTimeout {
                            table: name,
                            retries,
                            deleted: deleted_before + report.rows,
                        });
                    }
                    tokio::time::sleep(options.pause.max(Duration::from_millis(10)) * retries).await;
                    continue;
                }
                Err(e) => return Err(db_err(Some(&name), deleted_before + report.rows)(e)),
            };
            retries = 0;
            report.longest_batch = report.longest_batch.max(batch_started.elapsed());
            if n > 0 {
                report.rows += n;
                report.batches += 1;
                progress(Progress::Batch { table: &name, rows: n });
            }
            // A short batch means no row was left over, unless deleting this batch's rows
            // freed others of the same table (rows that reference each other): then go on
            // until a batch finds nothing.
            if n == 0 || (selected < u64::from(options.batch_size) && !self_referencing) {
                break;
            }
            if !options.pause.is_zero() && !sql.dry_run {
                tokio::time::sleep(options.pause).await;
            }
        }
        if sql.schema.referencing(table).next().is_some() {
            held(conn, sql, table, &run, &mut report)
                .await
                .map_err(db_err(Some(&name), deleted_before + report.rows))?;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    async fn held(
        conn: &mut PgConnection,
        sql: &Statements<'_>,
        table: usize,
        run: &Option<String>,
        report: &mut TableReport,
    ) -> Result<(), sqlx::Error> {
        let mut count = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.count_held(table)));
        if let Some(run) = run {
            count = count.bind(run.clone());
        }
        report.held = u64::try_from(count.fetch_one(&mut *conn).await?).unwrap_or(0);
        if report.held == 0 {
            return Ok(());
        }
        for (_, reference) in sql.schema.referencing(table) {
            let mut q = sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql.list_held(table, reference)));
            if let Some(run) = run {
                q = q.bind(run.clone());
            }
            for (key, holder) in q.fetch_all(&mut *conn).await? {
                add_held(&mut report.held_rows, key, holder, reference);
            }
        }
        Ok(())
    }

    fn is_lock_timeout(e: &sqlx::Error) -> bool {
        // 55P03: lock_not_available (lock_timeout expired).
        e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "55P03")
    }
}

mod sqlite {
    use super::*;

    fn db_err(table: Option<&str>, deleted: u64) -> impl FnOnce(sqlx::Error) -> CleanupError {
        let table = table.map(str::to_owned);
        move |source| CleanupError::Database { table, deleted, source }
    }

    /// Quoted primary key columns of a table, in key order (empty: none, the rowid stands in).
    async fn primary_key(conn: &mut SqliteConnection, table: &str) -> Result<Vec<String>, sqlx::Error> {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")
                .bind(table)
                .fetch_all(conn)
                .await?;
        Ok(names.iter().map(|n| quote_sqlite(n)).collect())
    }

    /// The schema version, which every change to the schema (a new trigger, a new table with a
    /// foreign key) increments.
    async fn schema_version(conn: &mut SqliteConnection) -> Result<String, sqlx::Error> {
        let v: i64 = sqlx::query_scalar("PRAGMA schema_version").fetch_one(conn).await?;
        Ok(v.to_string())
    }

    /// What names one row of the table (see [`TableSql::row_id`]); `None`: nothing does.
    async fn row_id(
        conn: &mut SqliteConnection,
        table: &str,
        columns: &[String],
        key: &[String],
    ) -> Result<Option<Vec<String>>, sqlx::Error> {
        let without_rowid: bool = sqlx::query_scalar(
            "SELECT coalesce(max(wr), 0) <> 0 FROM pragma_table_list(?1) WHERE schema = 'main'",
        )
        .bind(table)
        .fetch_one(conn)
        .await?;
        let alias = ["rowid", "_rowid_", "oid"]
            .into_iter()
            .find(|a| !columns.iter().any(|c| c.eq_ignore_ascii_case(a)));
        Ok(match alias {
            Some(alias) if !without_rowid => Some(vec![alias.to_owned()]),
            _ if !key.is_empty() => Some(key.to_vec()),
            _ => None,
        })
    }

    /// Checks the tables and reads every foreign key that points at them, from any table of
    /// the main schema (SQLite keeps them per referencing table, so every table is asked).
    pub(super) async fn read_schema(
        conn: &mut SqliteConnection,
        tables: &[Ident],
        column: &Ident,
        allow_triggers: bool,
    ) -> Result<Schema, CleanupError> {
        // Taken before any check: a change after it is caught by the first batch.
        let fingerprint = schema_version(conn).await.map_err(db_err(None, 0))?;
        let mut listed = Vec::with_capacity(tables.len());
        // The tables' names as the catalog spells them (SQLite names ignore ASCII case).
        let mut names: Vec<String> = Vec::with_capacity(tables.len());
        for table in tables {
            let err = || db_err(Some(table.as_str()), 0);
            let name: Option<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            )
            .bind(table.name())
            .fetch_optional(&mut *conn)
            .await
            .map_err(err())?;
            let name = name.ok_or_else(|| CleanupError::MissingTable { table: table.to_string() })?;
            if let Some(first) = names.iter().position(|n| n.eq_ignore_ascii_case(&name)) {
                return Err(CleanupError::DuplicateTable {
                    table: table.to_string(),
                    first: tables[first].to_string(),
                });
            }
            let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
                .bind(&name)
                .fetch_all(&mut *conn)
                .await
                .map_err(err())?;
            if !columns.iter().any(|n| n == column.as_str()) {
                return Err(CleanupError::MissingTagColumn {
                    table: table.to_string(),
                    column: column.to_string(),
                });
            }
            let key = primary_key(conn, &name).await.map_err(err())?;
            let row_id = row_id(conn, &name, &columns, &key)
                .await
                .map_err(err())?
                .ok_or_else(|| CleanupError::NoRowIdentity { table: table.to_string() })?;
            listed.push(TableSql {
                sql: table.quoted().to_owned(),
                label: table.to_string(),
                key,
                row_id,
                descendants: false,
            });
            names.push(name);
        }
        let position = |name: &str| names.iter().position(|t| t.eq_ignore_ascii_case(name));

        if !allow_triggers {
            let triggers: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT tbl_name, name, coalesce(sql, '') FROM sqlite_master WHERE type = 'trigger' ORDER BY tbl_name, name",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err(None, 0))?;
            if let Some((table, trigger, _)) = triggers
                .into_iter()
                .find(|(t, _, sql)| position(t).is_some() && is_sqlite_delete_trigger(sql))
            {
                return Err(CleanupError::DeleteTrigger { table, trigger });
            }
        }

        type ForeignKeyRow = (String, i64, String, String, Option<String>, String);
        let rows: Vec<ForeignKeyRow> = sqlx::query_as(
            "SELECT m.name, f.id, f.\"table\", f.\"from\", f.\"to\", f.on_delete
             FROM sqlite_master AS m JOIN pragma_foreign_key_list(m.name) AS f
             WHERE m.type = 'table' ORDER BY m.name, f.id, f.seq",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(None, 0))?;
        let mut references: Vec<Reference> = Vec::new();
        let mut keys: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
        let mut current: Option<(String, i64)> = None;
        for (child, id, parent_name, from, to, action) in rows {
            let Some(parent) = position(&parent_name) else { continue };
            let same = current.as_ref().is_some_and(|(c, i)| *c == child && *i == id);
            if same && let Some(last) = references.last_mut() {
                last.child_cols.push(quote_sqlite(&from));
                last.name.pop(); // the closing parenthesis
                last.name.push_str(&format!(", {from})"));
                if let Some(to) = to {
                    last.parent_cols.push(quote_sqlite(&to));
                }
                continue;
            }
            current = Some((child.clone(), id));
            let on_delete =
                OnDelete::from_sqlite(&action).ok_or_else(|| CleanupError::UnknownForeignKeyAction {
                    constraint: format!("{child}({from})"),
                    action: action.clone(),
                })?;
            let (key, row_id) = match keys.get(&child) {
                Some(known) => known.clone(),
                None => {
                    let key = primary_key(conn, &child).await.map_err(db_err(None, 0))?;
                    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
                        .bind(&child)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(db_err(None, 0))?;
                    // Only shown in the report: a table no name reaches is still read.
                    let row_id = row_id(conn, &child, &columns, &key)
                        .await
                        .map_err(db_err(None, 0))?
                        .unwrap_or_default();
                    keys.insert(child.clone(), (key.clone(), row_id.clone()));
                    (key, row_id)
                }
            };
            references.push(Reference {
                name: format!("{child}({from})"),
                child: TableSql {
                    sql: quote_sqlite(&child),
                    label: child.clone(),
                    key,
                    row_id,
                    descendants: false,
                },
                child_listed: position(&child),
                child_cols: vec![quote_sqlite(&from)],
                parent,
                // Without a column list the key references the parent's primary key.
                parent_cols: to.map(|t| vec![quote_sqlite(&t)]).unwrap_or_default(),
                parent_relations: None,
                on_delete,
            });
        }
        for r in &mut references {
            if r.parent_cols.len() != r.child_cols.len() {
                r.parent_cols = listed[r.parent].key.clone();
                if r.parent_cols.is_empty() {
                    r.parent_cols = listed[r.parent].row_id.clone();
                }
            }
        }
        Ok(Schema { tables: listed, references, fingerprint, oids: Vec::new() })
    }

    pub(super) async fn clean_table(
        conn: &mut SqliteConnection,
        sql: &Statements<'_>,
        table: usize,
        options: &CleanupOptions,
        deleted_before: u64,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<TableReport, CleanupError> {
        let started = Instant::now();
        let name = sql.schema.tables[table].label.clone();
        let mut report = TableReport { table: name.clone(), ..TableReport::default() };
        let run = run_text(sql.selector);
        let mut count = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.count_tagged(table)));
        if let Some(run) = &run {
            count = count.bind(run.clone());
        }
        let total = count.fetch_one(&mut *conn).await.map_err(db_err(Some(&name), deleted_before))?;
        progress(Progress::Counted { table: &name, rows: u64::try_from(total).unwrap_or(0) });

        let batch_sql = if sql.dry_run { sql.mark_batch(table) } else { sql.sqlite_delete_batch(table) };
        let self_referencing = sql.schema.self_referencing(table);
        loop {
            let batch_started = Instant::now();
            let n = match batch(conn, sql, &batch_sql, options, &run).await {
                Ok(Some(n)) => n,
                Ok(None) => {
                    return Err(CleanupError::SchemaChanged {
                        table: name,
                        deleted: deleted_before + report.rows,
                    });
                }
                Err(e) => return Err(db_err(Some(&name), deleted_before + report.rows)(e)),
            };
            report.longest_batch = report.longest_batch.max(batch_started.elapsed());
            if n == 0 {
                break;
            }
            report.rows += n;
            report.batches += 1;
            progress(Progress::Batch { table: &name, rows: n });
            // See the PostgreSQL loop: rows that reference each other free more rows.
            if n < u64::from(options.batch_size) && !self_referencing {
                break;
            }
            if !options.pause.is_zero() && !sql.dry_run {
                tokio::time::sleep(options.pause).await;
            }
        }
        if sql.schema.referencing(table).next().is_some() {
            held(conn, sql, table, &run, &mut report)
                .await
                .map_err(db_err(Some(&name), deleted_before + report.rows))?;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// One batch: rows deleted (or marked), or `None` when the schema changed since the
    /// start-up checks (nothing was deleted by this batch). A real batch takes the write lock
    /// first (`BEGIN IMMEDIATE`), so no schema change can land between its check and its delete.
    async fn batch(
        conn: &mut SqliteConnection,
        sql: &Statements<'_>,
        batch_sql: &str,
        options: &CleanupOptions,
        run: &Option<String>,
    ) -> Result<Option<u64>, sqlx::Error> {
        let mut q = sqlx::query(AssertSqlSafe(batch_sql.to_owned())).bind(i64::from(options.batch_size));
        if let Some(run) = run {
            q = q.bind(run.clone());
        }
        if sql.dry_run {
            return Ok(Some(q.execute(&mut *conn).await?.rows_affected()));
        }
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let outcome: Result<Option<u64>, sqlx::Error> = async {
            if schema_version(&mut *conn).await? != sql.schema.fingerprint {
                return Ok(None);
            }
            Ok(Some(q.execute(&mut *conn).await?.rows_affected()))
        }
        .await;
        let end = if matches!(outcome, Ok(Some(_))) { "COMMIT" } else { "ROLLBACK" };
        let ended = sqlx::raw_sql(end).execute(&mut *conn).await;
        let n = outcome?;
        ended?;
        Ok(n)
    }

    async fn held(
        conn: &mut SqliteConnection,
        sql: &Statements<'_>,
        table: usize,
        run: &Option<String>,
        report: &mut TableReport,
    ) -> Result<(), sqlx::Error> {
        let mut count = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.count_held(table)));
        if let Some(run) = run {
            count = count.bind(run.clone());
        }
        report.held = u64::try_from(count.fetch_one(&mut *conn).await?).unwrap_or(0);
        if report.held == 0 {
            return Ok(());
        }
        for (_, reference) in sql.schema.referencing(table) {
            let mut q = sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql.list_held(table, reference)));
            if let Some(run) = run {
                q = q.bind(run.clone());
            }
            for (key, holder) in q.fetch_all(&mut *conn).await? {
                add_held(&mut report.held_rows, key, holder, reference);
            }
        }
        Ok(())
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
        assert_eq!(children_first(&t, &edges).unwrap(), [2, 3, 1, 0]);
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

    #[test]
    fn sqlite_delete_triggers_are_recognised_failing_closed() {
        assert!(is_sqlite_delete_trigger("CREATE TRIGGER t AFTER DELETE ON products BEGIN SELECT 1; END"));
        assert!(is_sqlite_delete_trigger(
            "create trigger \"x\" before\n/* c */delete on \"p\" begin select 1; end"
        ));
        assert!(!is_sqlite_delete_trigger("CREATE TRIGGER t AFTER INSERT ON products BEGIN SELECT 1; END"));
        assert!(!is_sqlite_delete_trigger("CREATE TRIGGER deleted_at AFTER UPDATE ON p BEGIN SELECT 1; END"));
    }

    #[test]
    fn foreign_key_actions_from_both_catalogs() {
        for a in [
            OnDelete::NoAction,
            OnDelete::Restrict,
            OnDelete::Cascade,
            OnDelete::SetNull,
            OnDelete::SetDefault,
        ] {
            assert_eq!(OnDelete::from_sqlite(a.as_sql()), Some(a));
        }
        assert_eq!(OnDelete::from_pg("n"), Some(OnDelete::SetNull));
        assert_eq!(OnDelete::from_pg("x"), None);
        assert_eq!(OnDelete::from_sqlite("DROP"), None);
    }
}
