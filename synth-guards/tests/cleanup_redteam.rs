//! synth-cleanup never changes an untagged row, nor another run's row, in the corners a red
//! team probed (issue 11 §3, follow-up): found by a red team; each failed before the fix.
//!
//! The red team's eleven come first. The tests after them guard neighbouring corners found while
//! fixing those; each says whether it failed before the fix.
#![cfg(feature = "cleanup")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::OnceLock, time::Duration};

use sqlx::{AssertSqlSafe, Connection, PgConnection, SqliteConnection};
use synth_ctx::RunId;
use synth_guards::cleanup::{CleanupError, CleanupOptions, Selector, cleanup};
use synth_testkit::pg::PgCluster;

fn cluster() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start("synth-guards redteam_cleanup")).as_ref()
}

fn sqlite_database(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("synth-redteam-cleanup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    format!("sqlite://{}?mode=rwc", path.display())
}

fn options(tables: &[&str], run: &str, dry_run: bool) -> CleanupOptions {
    let mut o = CleanupOptions::new(
        tables.iter().map(|t| (*t).to_owned()).collect(),
        Selector::Run(RunId::new(run).unwrap()),
    );
    o.dry_run = dry_run;
    o.pause = Duration::ZERO;
    o
}

async fn pg_exec(c: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(c).await.unwrap();
}

async fn pg_ids(c: &mut PgConnection, table: &str) -> Vec<i64> {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT id::int8 FROM {table} ORDER BY id")))
        .fetch_all(c)
        .await
        .unwrap()
}

async fn lite_exec(c: &mut SqliteConnection, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(c).await.unwrap();
}

async fn lite_ids(c: &mut SqliteConnection, table: &str) -> Vec<i64> {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT id FROM {table} ORDER BY id")))
        .fetch_all(c)
        .await
        .unwrap()
}

/// A referencing table under row-level security that applies to the cleanup's role is refused
/// before anything is deleted: the role cannot see every reference, and CASCADE ignores RLS.
/// Before the fix the hidden real review was cascaded away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_referencing_table_under_row_level_security_is_refused() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("rt_rls");
    let mut db = PgConnection::connect(&url).await.unwrap();
    pg_exec(
        &mut db,
        "CREATE TABLE products (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL,
                               product_id INTEGER REFERENCES products(id) ON DELETE CASCADE);
         ALTER TABLE reviews ENABLE ROW LEVEL SECURITY;
         CREATE POLICY tenant_only ON reviews USING (tenant = current_setting('app.tenant', true));
         INSERT INTO products VALUES (1, NULL), (2, 'r1');
         INSERT INTO reviews VALUES (10, 'acme', 2);
         CREATE ROLE rt_cleanup LOGIN;
         GRANT SELECT, DELETE, UPDATE ON products TO rt_cleanup;
         GRANT SELECT ON reviews TO rt_cleanup;",
    )
    .await;
    let role_url = url.replacen("postgres@", "rt_cleanup@", 1);
    let report = cleanup(&role_url, &options(&["products"], "r1", false), &mut |_| {}).await;
    assert_eq!(pg_ids(&mut db, "reviews").await, [10], "a real review was cascaded away: {report:?}");
    assert!(
        matches!(&report, Err(CleanupError::RowLevelSecurity { table, .. }) if table == "reviews"),
        "{report:?}"
    );
    assert_eq!(pg_ids(&mut db, "products").await, [1, 2], "refused before anything was deleted");
    // The owner (RLS does not apply to it) cleans: the hidden review holds the product.
    let owner = cleanup(&url, &options(&["products"], "r1", false), &mut |_| {}).await.unwrap();
    assert_eq!((owner.total_rows(), owner.total_held()), (0, 1));
}

/// Inheriting tables are cleaned with their parent (as `DELETE FROM products` does), and the
/// foreign keys pointing at them hold their rows. Before the fix only the keys pointing at
/// `products` itself were read, and a real review of an archived product was cascaded away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_references_to_inheriting_tables_hold_their_rows() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("rt_inherit");
    let mut db = PgConnection::connect(&url).await.unwrap();
    pg_exec(
        &mut db,
        "CREATE TABLE products (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE TABLE archived_products () INHERITS (products);
         ALTER TABLE archived_products ADD PRIMARY KEY (id);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY,
                               product_id INTEGER REFERENCES archived_products(id) ON DELETE CASCADE);
         INSERT INTO products VALUES (1, NULL), (2, 'r1');
         INSERT INTO archived_products VALUES (5, 'r1');
         INSERT INTO reviews VALUES (10, 5);",
    )
    .await;
    let report = cleanup(&url, &options(&["products"], "r1", false), &mut |_| {}).await;
    assert_eq!(pg_ids(&mut db, "reviews").await, [10], "a real review was cascaded away: {report:?}");
    // The inheriting table is cleaned with its parent: product 2 goes, archived 5 is held.
    let report = report.unwrap();
    assert_eq!((report.total_rows(), report.total_held()), (1, 1));
    assert_eq!(pg_ids(&mut db, "products").await, [1, 5]);
    assert_eq!(report.tables[0].held_rows[0].held_by[0].table, "reviews");
}

/// A DELETE trigger on a partition of a listed table is refused (deleting through the parent
/// fires it). Before the fix it was not, and it changed an untagged row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_delete_trigger_on_a_partition_is_refused() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("rt_partition_trigger");
    let mut db = PgConnection::connect(&url).await.unwrap();
    pg_exec(
        &mut db,
        "CREATE TABLE events (id INTEGER, region TEXT, synthetic_run_id TEXT) PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
         CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
         CREATE TABLE account (id INTEGER PRIMARY KEY, balance INTEGER);
         INSERT INTO account VALUES (1, 100);
         CREATE FUNCTION refund() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN UPDATE account SET balance = balance - 1 WHERE id = 1; RETURN OLD; END $$;
         CREATE TRIGGER refund AFTER DELETE ON events_eu FOR EACH ROW EXECUTE FUNCTION refund();
         INSERT INTO events VALUES (1, 'eu', 'r1'), (2, 'us', NULL);",
    )
    .await;
    let report = cleanup(&url, &options(&["events"], "r1", false), &mut |_| {}).await;
    let balance: i32 =
        sqlx::query_scalar("SELECT balance FROM account WHERE id = 1").fetch_one(&mut db).await.unwrap();
    assert_eq!(balance, 100, "a partition's DELETE trigger changed an untagged row: {report:?}");
    assert!(
        matches!(&report, Err(CleanupError::DeleteTrigger { table, trigger }) if table == "events_eu" && trigger == "refund"),
        "{report:?}"
    );
}

/// A dry run on a partitioned table counts what the run deletes: rows are marked by
/// (tableoid, ctid). Before the fix ctids repeated across partitions (duplicate key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dry_run_on_a_partitioned_table_predicts_the_run() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("rt_partition_dry");
    let mut db = PgConnection::connect(&url).await.unwrap();
    pg_exec(
        &mut db,
        "CREATE TABLE events (id INTEGER, region TEXT, synthetic_run_id TEXT) PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
         CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
         INSERT INTO events VALUES (1, 'eu', 'r1'), (2, 'us', 'r1');",
    )
    .await;
    let dry = cleanup(&url, &options(&["events"], "r1", true), &mut |_| {}).await;
    let dry_rows = dry.as_ref().map(|r| r.total_rows()).map_err(|e| e.to_string());
    let real = cleanup(&url, &options(&["events"], "r1", false), &mut |_| {}).await.unwrap();
    assert_eq!(real.total_rows(), 2);
    assert_eq!(dry_rows, Ok(2), "the dry run does not predict the run");
}

/// SQLite: a column named `rowid` does not stand in for the row id, and the outer DELETE
/// repeats the reference check. Before the fix every tagged row with the same `rowid` value
/// went, a referenced one too, and its CASCADE deleted a real review.
#[tokio::test]
async fn sqlite_a_column_named_rowid_does_not_let_a_held_row_go() {
    let url = sqlite_database("rowid_column");
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    lite_exec(
        &mut db,
        "PRAGMA foreign_keys = ON;
         CREATE TABLE products (id INTEGER PRIMARY KEY, rowid INTEGER, synthetic_run_id TEXT);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_id INTEGER REFERENCES products(id) ON DELETE CASCADE, body TEXT);
         INSERT INTO products VALUES (1, 7, 'r1'), (2, 7, 'r1');
         INSERT INTO reviews VALUES (10, 1, 'a real customer');",
    )
    .await;
    let report = cleanup(&url, &options(&["products"], "r1", false), &mut |_| {}).await;
    assert_eq!(lite_ids(&mut db, "reviews").await, [10], "a real review was cascaded away: {report:?}");
    let report = report.unwrap();
    assert_eq!((report.total_rows(), report.total_held()), (1, 1));
    assert_eq!(lite_ids(&mut db, "products").await, [1]);
}

/// SQLite: the tag is compared byte for byte, so `--run r1` keeps run `R1`'s rows even under a
/// `COLLATE NOCASE` tag column. Before the fix it deleted them.
#[tokio::test]
async fn sqlite_a_nocase_tag_column_still_keeps_other_runs_rows() {
    let url = sqlite_database("nocase");
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    lite_exec(
        &mut db,
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, synthetic_run_id TEXT COLLATE NOCASE);
         INSERT INTO orders VALUES (1, 'r1'), (2, 'R1'), (3, NULL);",
    )
    .await;
    let report = cleanup(&url, &options(&["orders"], "r1", false), &mut |_| {}).await;
    assert_eq!(lite_ids(&mut db, "orders").await, [2, 3], "run R1's row was deleted by --run r1: {report:?}");
}

/// SQLite: a `WITHOUT ROWID` table is cleaned (and dry-run) by its primary key. Before the fix:
/// "no such column: s.rowid".
#[tokio::test]
async fn sqlite_without_rowid_tables_are_cleaned_by_primary_key() {
    let url = sqlite_database("without_rowid");
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    lite_exec(
        &mut db,
        "CREATE TABLE tokens (id TEXT PRIMARY KEY, synthetic_run_id TEXT) WITHOUT ROWID;
         INSERT INTO tokens VALUES ('a', 'r1'), ('b', NULL);",
    )
    .await;
    let dry = cleanup(&url, &options(&["tokens"], "r1", true), &mut |_| {}).await.unwrap();
    assert_eq!(dry.total_rows(), 1);
    let report = cleanup(&url, &options(&["tokens"], "r1", false), &mut |_| {}).await.unwrap();
    assert_eq!(report.total_rows(), 1);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT id FROM tokens ORDER BY id").fetch_all(&mut db).await.unwrap();
    assert_eq!(left, ["b"]);
}

/// The same table named twice (`products,public.products`) is refused before anything is
/// deleted. Before the fix the second pass knew no foreign key: the held product went and its
/// CASCADE deleted a real review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_table_listed_twice_is_refused() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("rt_twice");
    let mut db = PgConnection::connect(&url).await.unwrap();
    pg_exec(
        &mut db,
        "CREATE TABLE products (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_id INTEGER REFERENCES products(id) ON DELETE CASCADE);
         INSERT INTO products VALUES (1, NULL), (2, 'r1');
         INSERT INTO reviews VALUES (10, 2);",
    )
    .await;
    let report = cleanup(&url, &options(&["products", "public.products"], "r1", false), &mut |_| {}).await;
    assert_eq!(pg_ids(&mut db, "reviews").await, [10], "a real review was cascaded away: {report:?}");
    assert!(
        matches!(&report, Err(CleanupError::DuplicateTable { table, first }) if table == "public.products" && first == "products"),
        "{report:?}"
    );
    assert_eq!(pg_ids(&mut db, "products").await, [1, 2], "refused before anything was deleted");
}

/// The same on SQLite, with the name spelt in another case.
#[tokio::test]
async fn sqlite_a_table_listed_twice_in_another_case_is_refused() {
    let url = sqlite_database("twice");
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    lite_exec(
        &mut db,
        "CREATE TABLE products (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_id INTEGER REFERENCES products(id) ON DELETE CASCADE);
         INSERT INTO products VALUES (1, NULL), (2, 'r1');
         INSERT INTO reviews VALUES (10, 2);",
    )
    .await;
    let report = cleanup(&url, &options(&["products", "PRODUCTS"], "r1", false), &mut |_| {}).await;
    assert_eq!(lite_ids(&mut db, "reviews").await, [10], "a real review was cascaded away: {report:?}");
    assert!(matches!(&report, Err(CleanupError::DuplicateTable { .. })), "{report:?}");
    assert_eq!(lite_ids(&mut db, "products").await, [1, 2], "refused before anything was deleted");
}

/// SQLite: a reference is seen with the parent key's collation, as SQLite's foreign key (its
/// check and its CASCADE) sees it: review `ABC` holds product `abc` under `COLLATE NOCASE`.
/// Before the fix the child's collation (BINARY) was used, the product went and the CASCADE
/// deleted the real review.
#[tokio::test]
async fn sqlite_a_reference_under_the_parent_keys_collation_holds() {
    let url = sqlite_database("collation");
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    lite_exec(
        &mut db,
        "PRAGMA foreign_keys = ON;
         CREATE TABLE products (id INTEGER PRIMARY KEY, code TEXT COLLATE NOCASE UNIQUE, synthetic_run_id TEXT);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_code TEXT REFERENCES products(code) ON DELETE CASCADE);
         INSERT INTO products VALUES (1, 'abc', 'r1');
         INSERT INTO reviews VALUES (10, 'ABC');",
    )
    .await;
    let report = cleanup(&url, &options(&["products"], "r1", false), &mut |_| {}).await;
    assert_eq!(lite_ids(&mut db, "reviews").await, [10], "a real review was cascaded away: {report:?}");
    let report = report.unwrap();
    assert_eq!((report.total_rows(), report.total_held()), (0, 1));
}

/// A DELETE trigger created while the cleanup runs (a migration deployed mid-run) stops it
/// before the next batch. Before the fix the trigger was checked once, at start, and fired on
/// the following batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_delete_trigger_added_mid_run_stops_the_cleanup() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("rt_trigger_mid_run");
    let mut db = PgConnection::connect(&url).await.unwrap();
    pg_exec(
        &mut db,
        "CREATE TABLE events (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE TABLE account (id INTEGER PRIMARY KEY, balance INTEGER);
         INSERT INTO account VALUES (1, 100);
         CREATE FUNCTION refund() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN UPDATE account SET balance = balance - 1 WHERE id = 1; RETURN OLD; END $$;
         INSERT INTO events SELECT g, 'r1' FROM generate_series(1, 10) g;",
    )
    .await;
    let mut o = options(&["events"], "r1", false);
    o.batch_size = 2;
    let mut migration = PgConnection::connect(&url).await.unwrap();
    let mut added = false;
    let report = cleanup(&url, &o, &mut |p| {
        // After the first batch: the migration lands, on a connection of its own.
        if matches!(p, synth_guards::cleanup::Progress::Batch { .. }) && !added {
            added = true;
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(pg_exec(
                    &mut migration,
                    "CREATE TRIGGER refund AFTER DELETE ON events FOR EACH ROW EXECUTE FUNCTION refund()",
                ))
            });
        }
    })
    .await;
    assert!(added, "the migration never ran: {report:?}");
    let balance: i32 =
        sqlx::query_scalar("SELECT balance FROM account WHERE id = 1").fetch_one(&mut db).await.unwrap();
    assert_eq!(balance, 100, "a DELETE trigger added mid-run changed an untagged row: {report:?}");
    assert!(matches!(&report, Err(CleanupError::SchemaChanged { deleted: 2, .. })), "{report:?}");
    assert_eq!(pg_ids(&mut db, "events").await, (3..=10).collect::<Vec<_>>());
}

/// A partition listed with its partitioned table would be cleaned twice: refused, like a table
/// listed twice. (Added with the fix: before, there was no such refusal.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_partition_listed_with_its_table_is_refused() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("rt_partition_twice");
    let mut db = PgConnection::connect(&url).await.unwrap();
    pg_exec(
        &mut db,
        "CREATE TABLE events (id INTEGER, region TEXT, synthetic_run_id TEXT) PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
         INSERT INTO events VALUES (1, 'eu', 'r1');",
    )
    .await;
    let report = cleanup(&url, &options(&["events_eu", "events"], "r1", false), &mut |_| {}).await;
    assert!(
        matches!(&report, Err(CleanupError::DuplicateTable { table, first }) if table == "events" && first == "events_eu"),
        "{report:?}"
    );
    assert_eq!(pg_ids(&mut db, "events").await, [1]);
}

/// A partitioned table referenced by a partitioned table: the referenced rows are held in every
/// partition, the others go, with and without a run (the batch's row ids carry their partition).
/// Failed before the fix: no row was counted as held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_references_between_partitioned_tables_hold_their_rows() {
    let Some(cluster) = cluster() else { return };
    for (run, db_name) in [(Some("r1"), "rt_partition_refs_run"), (None, "rt_partition_refs_all")] {
        let url = cluster.create_database(db_name);
        let mut db = PgConnection::connect(&url).await.unwrap();
        pg_exec(
            &mut db,
            "CREATE TABLE events (id INTEGER, region TEXT, synthetic_run_id TEXT, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
             CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
             CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
             CREATE TABLE notes (id INTEGER, region TEXT, event_id INTEGER,
                                 FOREIGN KEY (event_id, region) REFERENCES events ON DELETE CASCADE)
               PARTITION BY LIST (region);
             CREATE TABLE notes_eu PARTITION OF notes FOR VALUES IN ('eu');
             CREATE TABLE notes_us PARTITION OF notes FOR VALUES IN ('us');
             INSERT INTO events VALUES (1, 'eu', 'r1'), (2, 'eu', 'r1'), (1, 'us', 'r1'), (2, 'us', 'r1'), (3, 'us', NULL);
             INSERT INTO notes VALUES (10, 'eu', 1), (11, 'us', 2);",
        )
        .await;
        let mut o = match run {
            Some(run) => options(&["events"], run, false),
            None => {
                let mut o = options(&["events"], "r1", false);
                o.selector = Selector::AllSynthetic;
                o
            }
        };
        o.batch_size = 1;
        let mut dry_options = o.clone();
        dry_options.dry_run = true;
        let dry = cleanup(&url, &dry_options, &mut |_| {}).await.unwrap();
        let report = cleanup(&url, &o, &mut |_| {}).await.unwrap();
        assert_eq!((report.total_rows(), report.total_held()), (2, 2), "{run:?}");
        assert_eq!((dry.total_rows(), dry.total_held()), (2, 2), "{run:?}");
        assert_eq!(pg_ids(&mut db, "notes").await, [10, 11]);
        let left: Vec<(i32, String)> = sqlx::query_as("SELECT id, region FROM events ORDER BY region, id")
            .fetch_all(&mut db)
            .await
            .unwrap();
        assert_eq!(left, [(1, "eu".to_owned()), (2, "us".to_owned()), (3, "us".to_owned())]);
    }
}

/// SQLite: a DELETE trigger created between batches stops the cleanup before the next one.
/// (Added with the fix: before, the trigger was checked once, at start, as on PostgreSQL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_delete_trigger_added_mid_run_stops_the_cleanup() {
    let url = sqlite_database("trigger_mid_run");
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    lite_exec(
        &mut db,
        "CREATE TABLE events (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE TABLE account (id INTEGER PRIMARY KEY, balance INTEGER);
         INSERT INTO account VALUES (1, 100);
         WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 10)
           INSERT INTO events SELECT n, 'r1' FROM g;",
    )
    .await;
    let mut o = options(&["events"], "r1", false);
    o.batch_size = 2;
    let mut added = false;
    let report = cleanup(&url, &o, &mut |p| {
        if matches!(p, synth_guards::cleanup::Progress::Batch { .. }) && !added {
            added = true;
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(lite_exec(
                    &mut db,
                    "CREATE TRIGGER refund AFTER DELETE ON events BEGIN UPDATE account SET balance = balance - 1; END",
                ))
            });
        }
    })
    .await;
    assert!(matches!(&report, Err(CleanupError::SchemaChanged { deleted: 2, .. })), "{report:?}");
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM account").fetch_one(&mut db).await.unwrap();
    assert_eq!(balance, 100);
    assert_eq!(lite_ids(&mut db, "events").await, (3..=10).collect::<Vec<_>>());
}

/// SQLite: a table without a primary key whose columns hide every name of the row id is
/// refused with a clear error, not cleaned by a column that only looks like the row id. (Added
/// with the fix: before, the column named `rowid` was used as the row id.)
#[tokio::test]
async fn sqlite_a_table_whose_columns_hide_the_row_id_is_refused() {
    let url = sqlite_database("hidden_rowid");
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    lite_exec(
        &mut db,
        "CREATE TABLE t (rowid INTEGER, _rowid_ INTEGER, oid INTEGER, synthetic_run_id TEXT);
         INSERT INTO t VALUES (1, 1, 1, 'r1'), (1, 1, 1, NULL);",
    )
    .await;
    let report = cleanup(&url, &options(&["t"], "r1", false), &mut |_| {}).await;
    assert!(matches!(&report, Err(CleanupError::NoRowIdentity { table }) if table == "t"), "{report:?}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut db).await.unwrap();
    assert_eq!(n, 2);
}

/// A least-privilege role granted only on the partitioned table (as queries through it need)
/// cleans it: the checks added for partitions ask for nothing more. (A guard for the fix: it
/// passed before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_role_granted_on_the_partitioned_table_only_cleans_it() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("rt_partition_role");
    let mut db = PgConnection::connect(&url).await.unwrap();
    pg_exec(
        &mut db,
        "CREATE TABLE events (id INTEGER, region TEXT, synthetic_run_id TEXT, PRIMARY KEY (id, region))
           PARTITION BY LIST (region);
         CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu');
         CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');
         CREATE TABLE notes (id INTEGER PRIMARY KEY, region TEXT, event_id INTEGER,
                             FOREIGN KEY (event_id, region) REFERENCES events ON DELETE CASCADE);
         INSERT INTO events VALUES (1, 'eu', 'r1'), (2, 'us', 'r1'), (3, 'us', NULL);
         INSERT INTO notes VALUES (10, 'us', 2);
         CREATE ROLE rt_partition_cleanup LOGIN;
         GRANT SELECT, DELETE, UPDATE ON events TO rt_partition_cleanup;
         GRANT SELECT ON notes TO rt_partition_cleanup;",
    )
    .await;
    let role_url = url.replacen("postgres@", "rt_partition_cleanup@", 1);
    let report = cleanup(&role_url, &options(&["events"], "r1", false), &mut |_| {}).await.unwrap();
    assert_eq!((report.total_rows(), report.total_held()), (1, 1));
    assert_eq!(pg_ids(&mut db, "events").await, [2, 3]);
}

/// PostgreSQL: the run is compared byte for byte even when the tag column has a
/// case-insensitive (nondeterministic) collation or type, so `--run r1` keeps run `R1`'s rows.
/// Failed before the fix (the nondeterministic collation matched `R1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_case_insensitive_tag_column_still_keeps_other_runs_rows() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("rt_nocase_tag");
    let mut db = PgConnection::connect(&url).await.unwrap();
    pg_exec(
        &mut db,
        "CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE EXTENSION citext;
         CREATE TABLE orders (id INTEGER PRIMARY KEY, synthetic_run_id TEXT COLLATE nocase);
         CREATE TABLE carts (id INTEGER PRIMARY KEY, synthetic_run_id citext);
         INSERT INTO orders VALUES (1, 'r1'), (2, 'R1'), (3, NULL);
         INSERT INTO carts VALUES (1, 'r1'), (2, 'R1'), (3, NULL);",
    )
    .await;
    let report = cleanup(&url, &options(&["orders", "carts"], "r1", false), &mut |_| {}).await;
    assert_eq!(pg_ids(&mut db, "orders").await, [2, 3], "run R1's row was deleted by --run r1: {report:?}");
    assert_eq!(pg_ids(&mut db, "carts").await, [2, 3], "run R1's row was deleted by --run r1: {report:?}");
}

/// A view named as a table is refused with a clear error: a DELETE through it reaches its base
/// table, whose foreign keys would not be read. (Found while fixing the red team's findings;
/// before, only the view's lack of a `ctid` stopped it, with a bare database error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_view_is_refused() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("rt_view");
    let mut db = PgConnection::connect(&url).await.unwrap();
    pg_exec(
        &mut db,
        "CREATE TABLE products (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE VIEW live_products AS SELECT * FROM products;
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_id INTEGER REFERENCES products(id) ON DELETE CASCADE);
         INSERT INTO products VALUES (1, NULL), (2, 'r1');
         INSERT INTO reviews VALUES (10, 2);",
    )
    .await;
    let report = cleanup(&url, &options(&["live_products"], "r1", false), &mut |_| {}).await;
    assert_eq!(pg_ids(&mut db, "reviews").await, [10], "a real review was cascaded away: {report:?}");
    assert!(matches!(&report, Err(CleanupError::NotATable { kind: "view", .. })), "{report:?}");
}

/// Inheritance: a key referencing the parent table holds only the parent's row with that key,
/// not an inheriting table's row that happens to have the same key values (foreign keys
/// reference their own table only). Failed before the fix: both rows were held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_reference_to_the_parent_does_not_hold_an_inheriting_tables_row() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("rt_inherit_parent_ref");
    let mut db = PgConnection::connect(&url).await.unwrap();
    pg_exec(
        &mut db,
        "CREATE TABLE products (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE TABLE archived_products () INHERITS (products);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY,
                               product_id INTEGER REFERENCES products(id) ON DELETE CASCADE);
         INSERT INTO products VALUES (7, 'r1');
         INSERT INTO archived_products VALUES (7, 'r1');
         INSERT INTO reviews VALUES (10, 7);",
    )
    .await;
    let report = cleanup(&url, &options(&["products"], "r1", false), &mut |_| {}).await.unwrap();
    assert_eq!(pg_ids(&mut db, "reviews").await, [10]);
    assert_eq!((report.total_rows(), report.total_held()), (1, 1));
    assert_eq!(pg_ids(&mut db, "ONLY products").await, [7]);
    assert_eq!(pg_ids(&mut db, "archived_products").await, Vec::<i64>::new());
}
