//! Tagged rows and cleanup on real databases: a throwaway PostgreSQL cluster and SQLite files.
#![cfg(feature = "cleanup")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{process::Command, sync::OnceLock, time::Duration};

use proptest::prelude::*;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Row, SqliteConnection};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Synthetic, SyntheticFutureExt};
use synth_guards::{
    cleanup::{CleanupError, CleanupOptions, Selector, cleanup},
    db::{
        self,
        postgres::{add_tag_column, begin_tagged},
    },
};
use synth_testkit::pg::PgCluster;

fn synthetic(run: &str) -> Synthetic {
    let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    Signer::new(keys).mint_synthetic(Origin::Load, &RunId::new(run).unwrap(), Duration::from_secs(600))
}

/// One cluster for the whole test binary; each test works in a database of its own.
fn cluster() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start("synth-guards db tests")).as_ref()
}

fn database(name: &str) -> Option<String> {
    Some(cluster()?.create_database(name))
}

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(conn).await.unwrap();
}

async fn shop_schema(conn: &mut PgConnection) {
    exec(
        conn,
        "CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL);
         CREATE TABLE order_items (id bigserial PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders(id), sku text NOT NULL);",
    )
    .await;
    add_tag_column(conn, "orders").await.unwrap();
    add_tag_column(conn, "order_items").await.unwrap();
    // Safe to run twice.
    add_tag_column(conn, "orders").await.unwrap();
}

/// What the application does: plain INSERTs, no tag in sight.
async fn place_order(pool: &PgPool, customer: &str) -> i64 {
    let mut tx = begin_tagged(pool).await.unwrap();
    let id: i64 = sqlx::query_scalar("INSERT INTO orders (customer) VALUES ($1) RETURNING id")
        .bind(customer)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO order_items (order_id, sku) VALUES ($1, 'sku-1'), ($1, 'sku-2')")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_are_tagged_without_changing_inserts() {
    let Some(url) = database("tagging") else { return };
    let pool = PgPool::connect(&url).await.unwrap();
    shop_schema(&mut pool.acquire().await.unwrap()).await;

    let real = place_order(&pool, "ana").await;
    let syn = place_order(&pool, "u1+r1@loadtest.invalid").in_synthetic_scope(&synthetic("r1")).await;
    let real_again = place_order(&pool, "bo").await;
    let tag = |id: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>("SELECT synthetic_run_id FROM orders WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(tag(real).await, None);
    assert_eq!(tag(syn).await.as_deref(), Some("r1"));
    assert_eq!(tag(real_again).await, None, "the tag never outlives its transaction");
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM order_items WHERE synthetic_run_id = 'r1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(items, 2);
}

async fn checksum_except(conn: &mut PgConnection, table: &str, run: &str) -> (i64, String) {
    let sql = format!(
        "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY id)), '') FROM {table} t WHERE synthetic_run_id IS DISTINCT FROM $1"
    );
    let row = sqlx::query(AssertSqlSafe(sql)).bind(run).fetch_one(conn).await.unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_orders_by_foreign_keys_dry_runs_and_refuses_untagged_tables() {
    let Some(url) = database("fk_order") else { return };
    let pool = PgPool::connect(&url).await.unwrap();
    shop_schema(&mut pool.acquire().await.unwrap()).await;
    for i in 0..5 {
        place_order(&pool, &format!("real{i}")).await;
        place_order(&pool, "s").in_synthetic_scope(&synthetic("fk-run")).await;
    }
    exec(&mut pool.acquire().await.unwrap(), "CREATE TABLE audit (id bigserial PRIMARY KEY, what text)")
        .await;

    // Parents listed first: the foreign keys put children first anyway.
    let tables = vec!["orders".to_owned(), "order_items".to_owned()];
    let mut dry = CleanupOptions::new(tables.clone(), Selector::Run(RunId::new("fk-run").unwrap()));
    dry.dry_run = true;
    let report = cleanup(&url, &dry, &mut |_| {}).await.unwrap();
    assert_eq!(
        report.tables.iter().map(|t| (t.table.as_str(), t.rows)).collect::<Vec<_>>(),
        [("order_items", 10), ("orders", 5)]
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 10, "a dry run changes nothing");

    let untagged = CleanupOptions::new(vec!["order_items".into(), "audit".into()], Selector::AllSynthetic);
    let err = cleanup(&url, &untagged, &mut |_| {}).await.unwrap_err();
    assert!(matches!(err, CleanupError::MissingTagColumn { ref table, .. } if table == "audit"), "{err}");
    let missing = CleanupOptions::new(vec!["nope".into()], Selector::AllSynthetic);
    assert!(matches!(
        cleanup(&url, &missing, &mut |_| {}).await.unwrap_err(),
        CleanupError::MissingTable { .. }
    ));
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM order_items").fetch_one(&pool).await.unwrap();
    assert_eq!(items, 20, "an error before starting deletes nothing");

    let mut real = CleanupOptions::new(tables, Selector::Run(RunId::new("fk-run").unwrap()));
    real.batch_size = 3;
    real.pause = Duration::ZERO;
    let report = cleanup(&url, &real, &mut |_| {}).await.unwrap();
    assert_eq!(report.total_rows(), 15);
    assert_eq!(report.tables[0].batches, 4, "10 items in batches of 3");
    let (orders, items): (i64, i64) = (
        sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&pool).await.unwrap(),
        sqlx::query_scalar("SELECT count(*) FROM order_items").fetch_one(&pool).await.unwrap(),
    );
    assert_eq!((orders, items), (5, 10));
}

#[test]
fn cleanup_of_one_run_leaves_every_other_row_byte_for_byte() {
    let Some(url) = database("property") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let runs = ["ra", "rb", "rc"];
    // Per parent: its tag (None = real) and how many children with which tags.
    let parent = (prop::option::of(0..3usize), prop::collection::vec(prop::option::of(0..3usize), 0..4));
    let config = ProptestConfig { cases: 12, ..ProptestConfig::default() };
    proptest!(config, |(parents in prop::collection::vec(parent, 1..40), target in 0..3usize, batch in 1..7u32)| {
        rt.block_on(async {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            exec(&mut conn, "DROP TABLE IF EXISTS kids; DROP TABLE IF EXISTS parents;
                CREATE TABLE parents (id bigserial PRIMARY KEY, payload text, synthetic_run_id text);
                CREATE TABLE kids (id bigserial PRIMARY KEY, parent_id bigint REFERENCES parents(id), payload bytea, synthetic_run_id text);").await;
            for (i, (ptag, kids)) in parents.iter().enumerate() {
                let ptag = ptag.map(|r| runs[r]);
                let pid: i64 = sqlx::query_scalar("INSERT INTO parents (payload, synthetic_run_id) VALUES ($1, $2) RETURNING id")
                    .bind(format!("p{i} ünïcode 'quote'")).bind(ptag).fetch_one(&mut conn).await.unwrap();
                for (k, ktag) in kids.iter().enumerate() {
                    // A child of a real or other-run parent may only be tagged like its parent
                    // (a synthetic child of a real parent is fine; the reverse would block the parent).
                    let ktag = match ptag { Some(p) => Some(p), None => ktag.map(|r| runs[r]) };
                    sqlx::query("INSERT INTO kids (parent_id, payload, synthetic_run_id) VALUES ($1, $2, $3)")
                        .bind(pid).bind(vec![k as u8, 0, 255]).bind(ktag).execute(&mut conn).await.unwrap();
                }
            }
            let run = runs[target];
            let before = (checksum_except(&mut conn, "parents", run).await, checksum_except(&mut conn, "kids", run).await);
            let mut options = CleanupOptions::new(vec!["parents".into(), "kids".into()], Selector::Run(RunId::new(run).unwrap()));
            options.batch_size = batch;
            options.pause = Duration::ZERO;
            cleanup(&url, &options, &mut |_| {}).await.unwrap();
            let after = (checksum_except(&mut conn, "parents", run).await, checksum_except(&mut conn, "kids", run).await);
            assert_eq!(before, after, "rows of other runs or real rows changed");
            let left: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM parents WHERE synthetic_run_id = $1) + (SELECT count(*) FROM kids WHERE synthetic_run_id = $1)")
                .bind(run).fetch_one(&mut conn).await.unwrap();
            assert_eq!(left, 0, "rows of the run remain");
        });
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run_a_rerun_finishes_and_deletes_nothing_more() {
    let Some(url) = database("killed") else { return };
    let mut conn = PgConnection::connect(&url).await.unwrap();
    exec(
        &mut conn,
        "CREATE TABLE events (id bigserial PRIMARY KEY, body text, synthetic_run_id text);
         INSERT INTO events (body, synthetic_run_id)
           SELECT 'e' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'kill-run' END FROM generate_series(1, 60000) g;",
    )
    .await;
    let real_before = checksum_except(&mut conn, "events", "kill-run").await;
    let bin = env!("CARGO_BIN_EXE_synth-cleanup");
    let mut child = Command::new(bin)
        .args([
            "--database-url",
            &url,
            "--tables",
            "events",
            "--run",
            "kill-run",
            "--batch-size",
            "200",
            "--pause",
            "2ms",
        ])
        .spawn()
        .unwrap();
    // Let it delete part of the rows, then SIGKILL it mid-batch.
    let mut killed_part_way = false;
    for _ in 0..1500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE synthetic_run_id = 'kill-run'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        if left < 40000 {
            child.kill().unwrap();
            killed_part_way = left > 0;
            break;
        }
    }
    let _ = child.wait();
    assert!(killed_part_way, "the cleanup finished before it could be killed; make the table bigger");
    assert_eq!(checksum_except(&mut conn, "events", "kill-run").await, real_before);

    let out = Command::new(bin)
        .args(["--database-url", &url, "--tables", "events", "--run", "kill-run", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["total_rows"].as_u64().unwrap() > 0);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE synthetic_run_id IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(checksum_except(&mut conn, "events", "kill-run").await, real_before);

    // Exit codes: bad configuration is 2 and deletes nothing.
    let bad = Command::new(bin)
        .args(["--database-url", &url, "--tables", "nope", "--all-synthetic"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not exist"));
}

#[tokio::test]
async fn sqlite_explicit_tags_and_cleanup_in_list_order() {
    let dir = std::env::temp_dir().join(format!("synth-guards-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shop.db");
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("PRAGMA foreign_keys = ON; CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT); CREATE TABLE items (id INTEGER PRIMARY KEY, order_id INTEGER REFERENCES orders(id), sku TEXT); CREATE TABLE audit (id INTEGER PRIMARY KEY)")
        .execute(&mut conn)
        .await
        .unwrap();
    db::sqlite::add_tag_column(&mut conn, "orders").await.unwrap();
    db::sqlite::add_tag_column(&mut conn, "items").await.unwrap();
    db::sqlite::add_tag_column(&mut conn, "items").await.unwrap();

    for (customer, scope) in [("ana", None), ("s1", Some("sq-run")), ("bo", None), ("s2", Some("other-run"))]
    {
        let insert = async {
            let tag = db::current_tag();
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO orders (customer, synthetic_run_id) VALUES (?, ?) RETURNING id",
            )
            .bind(customer)
            .bind(&tag)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO items (order_id, sku, synthetic_run_id) VALUES (?, 'a', ?), (?, 'b', ?)",
            )
            .bind(id)
            .bind(&tag)
            .bind(id)
            .bind(&tag)
            .execute(&mut conn)
            .await
            .unwrap();
        };
        match scope {
            Some(run) => insert.in_synthetic_scope(&synthetic(run)).await,
            None => insert.await,
        }
    }
    let mut dry = CleanupOptions::new(
        vec!["items".into(), "orders".into()],
        Selector::Run(RunId::new("sq-run").unwrap()),
    );
    dry.dry_run = true;
    assert_eq!(cleanup(&url, &dry, &mut |_| {}).await.unwrap().total_rows(), 3);
    let missing = CleanupOptions::new(vec!["items".into(), "audit".into()], Selector::AllSynthetic);
    assert!(matches!(
        cleanup(&url, &missing, &mut |_| {}).await.unwrap_err(),
        CleanupError::MissingTagColumn { .. }
    ));

    let mut options = CleanupOptions::new(
        vec!["items".into(), "orders".into()],
        Selector::Run(RunId::new("sq-run").unwrap()),
    );
    options.batch_size = 1;
    let report = cleanup(&url, &options, &mut |_| {}).await.unwrap();
    assert_eq!(report.total_rows(), 3);
    let left: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT customer, synthetic_run_id FROM orders ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(left, [("ana".into(), None), ("bo".into(), None), ("s2".into(), Some("other-run".into()))]);
    let all = CleanupOptions::new(vec!["items".into(), "orders".into()], Selector::AllSynthetic);
    assert_eq!(cleanup(&url, &all, &mut |_| {}).await.unwrap().total_rows(), 3);
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM items").fetch_one(&mut conn).await.unwrap();
    assert_eq!(items, 4, "the real orders' items remain");
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
}
