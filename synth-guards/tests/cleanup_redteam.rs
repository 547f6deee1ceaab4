//! Red-team reproductions for synth-cleanup. Each test states the promise ("cleanup never
//! changes an untagged row, nor another run's row") and is EXPECTED TO FAIL on the current code.
#![cfg(feature = "cleanup")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::OnceLock, time::Duration};

use sqlx::{AssertSqlSafe, Connection, PgConnection, SqliteConnection};
use synth_ctx::RunId;
use synth_guards::cleanup::{CleanupOptions, Selector, cleanup};
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

/// Row-level security on the referencing table hides a real customer's review from the cleanup
/// role (a plain, least-privilege role with every grant the cleanup asks for). The NOT EXISTS
/// check sees no reference, the product is deleted, and the FK's CASCADE (which bypasses RLS)
/// deletes the hidden real review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_pg_rls_hides_a_reference_and_cascade_deletes_a_real_row() {
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
    // Whatever the outcome (an error refusing would be fine), the real review must still be there.
    assert_eq!(pg_ids(&mut db, "reviews").await, [10], "a real review was cascaded away: {report:?}");
}

/// Table inheritance: `DELETE FROM products` also deletes from `archived_products` (a child
/// table), but only foreign keys pointing at `products` itself are read. A real review
/// referencing an archived synthetic product is cascaded away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_pg_inheritance_child_reference_is_cascaded() {
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
}

/// A DELETE trigger on a partition (not on the partitioned table named in --tables) is not
/// refused: deleting through the parent fires it, and it changes an untagged row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_pg_delete_trigger_on_a_partition_is_not_refused() {
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
}

/// Dry run on a partitioned table: rows of different partitions share ctids, and the dry run
/// marks rows by (table, ctid). It fails (duplicate key) or miscounts, where the real run works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_pg_dry_run_on_a_partitioned_table_predicts_the_run() {
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

/// SQLite: a column named `rowid` shadows the row id. The batch picks an unreferenced row, then
/// deletes every tagged row with the same `rowid` value, including a referenced one, whose
/// ON DELETE CASCADE deletes a real review.
#[tokio::test]
async fn redteam_sqlite_rowid_column_deletes_a_held_row_and_cascades() {
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
}

/// SQLite: a tag column declared COLLATE NOCASE makes `--run r1` delete run R1's rows (another
/// run's rows).
#[tokio::test]
async fn redteam_sqlite_nocase_tag_column_deletes_another_runs_rows() {
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

/// SQLite WITHOUT ROWID tables have no rowid: the cleanup fails with "no such column" instead of
/// cleaning (or refusing with a clear message).
#[tokio::test]
async fn redteam_sqlite_without_rowid_table() {
    let url = sqlite_database("without_rowid");
    let mut db = SqliteConnection::connect(&url).await.unwrap();
    lite_exec(
        &mut db,
        "CREATE TABLE tokens (id TEXT PRIMARY KEY, synthetic_run_id TEXT) WITHOUT ROWID;
         INSERT INTO tokens VALUES ('a', 'r1'), ('b', NULL);",
    )
    .await;
    let report = cleanup(&url, &options(&["tokens"], "r1", false), &mut |_| {}).await;
    assert!(report.is_ok(), "{report:?}");
}

/// The same table named twice (`products,public.products`, or a generated list with a repeat):
/// the foreign keys are attached to the first entry only, so the second pass deletes with no
/// reference check at all; the held product goes and its CASCADE deletes the real review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_pg_table_listed_twice_deletes_a_held_row_and_cascades() {
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
}

/// The same on SQLite, with the name spelt in another case.
#[tokio::test]
async fn redteam_sqlite_table_listed_twice_deletes_a_held_row_and_cascades() {
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
}

/// SQLite: the parent key is `COLLATE NOCASE`, the referencing column is not. SQLite's foreign
/// key (its check and its CASCADE) compares with the parent key's collation, so review `ABC`
/// references product `abc`; the cleanup's `h.col = r.col` compares with the left operand's
/// (the child's, BINARY), sees no reference, deletes the product, and the CASCADE deletes the
/// real review.
#[tokio::test]
async fn redteam_sqlite_parent_key_collation_hides_a_reference() {
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
}

/// A DELETE trigger created while the cleanup runs (after its start-up check, e.g. by a
/// migration deployed mid-run) fires on the following batches: the trigger check is made once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_pg_delete_trigger_added_mid_run_fires() {
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
}
