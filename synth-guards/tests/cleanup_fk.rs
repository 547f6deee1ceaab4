//! Cleanup never changes an untagged row (issue 11 §3): a tagged row that another row references,
//! through a foreign key of any kind from any table, is held instead of deleted. On real
//! PostgreSQL and SQLite (foreign keys on), with a property test over random schemas.
#![cfg(feature = "cleanup")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    collections::BTreeSet,
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use proptest::prelude::*;
use sqlx::{AssertSqlSafe, Connection, PgConnection, SqliteConnection};
use synth_ctx::RunId;
use synth_guards::cleanup::{CleanupError, CleanupOptions, OnDelete, Report, Selector, cleanup};
use synth_testkit::pg::PgCluster;

/// One cluster for the whole test binary; each test works in a database of its own.
fn cluster() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start("synth-guards cleanup_fk tests")).as_ref()
}

fn pg_database(name: &str) -> Option<String> {
    Some(cluster()?.create_database(name))
}

/// A fresh SQLite file (foreign keys are per connection; sqlx turns them on).
fn sqlite_database(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("synth-cleanup-fk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Either database, for the tests that run on both.
enum Db {
    Pg(PgConnection),
    Lite(SqliteConnection),
}

impl Db {
    async fn open(url: &str) -> Db {
        if url.starts_with("postgres") {
            Db::Pg(PgConnection::connect(url).await.unwrap())
        } else {
            Db::Lite(SqliteConnection::connect(url).await.unwrap())
        }
    }

    async fn exec(&mut self, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        match self {
            Db::Pg(c) => drop(sqlx::raw_sql(sql).execute(c).await.unwrap()),
            Db::Lite(c) => drop(sqlx::raw_sql(sql).execute(c).await.unwrap()),
        }
    }

    /// Every row of `table` as (id, tag, the whole row as text), by id. `columns` names them
    /// all (SQLite has no row-to-text cast); a table without the tag column gives `None`.
    async fn dump(&mut self, table: &str, columns: &[&str]) -> Vec<(i64, Option<String>, String)> {
        let tag =
            if columns.contains(&"synthetic_run_id") { "synthetic_run_id" } else { "CAST(NULL AS TEXT)" };
        match self {
            Db::Pg(c) => sqlx::query_as(AssertSqlSafe(format!(
                "SELECT id::int8, {tag}, t::text FROM {table} t ORDER BY id"
            )))
            .fetch_all(c)
            .await
            .unwrap(),
            Db::Lite(c) => {
                let whole =
                    columns.iter().map(|c| format!("quote({c})")).collect::<Vec<_>>().join(" || ',' || ");
                sqlx::query_as(AssertSqlSafe(format!("SELECT id, {tag}, {whole} FROM {table} ORDER BY id")))
                    .fetch_all(c)
                    .await
                    .unwrap()
            }
        }
    }
}

fn run(r: &str) -> Selector {
    Selector::Run(RunId::new(r).unwrap())
}

fn options(tables: &[&str], selector: Selector, dry_run: bool) -> CleanupOptions {
    let mut o = CleanupOptions::new(tables.iter().map(|t| (*t).to_owned()).collect(), selector);
    o.dry_run = dry_run;
    o.pause = Duration::ZERO;
    o
}

/// (table, rows, held) per table: what a dry run must predict exactly.
fn outcome(report: &Report) -> Vec<(String, u64, u64)> {
    report.tables.iter().map(|t| (t.table.clone(), t.rows, t.held)).collect()
}

/// The reproduction: a tagged product, a real customer's review of it (ON DELETE
/// CASCADE). The product is held, the review intact, the counts and the exit code say so.
async fn reproduction(url: &str) {
    let mut db = Db::open(url).await;
    db.exec(
        "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, synthetic_run_id TEXT);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_id INTEGER REFERENCES products(id) ON DELETE CASCADE, body TEXT, synthetic_run_id TEXT);
         INSERT INTO products VALUES (1, 'real', NULL), (2, 'made by the run', 'r1'), (3, 'also by the run', 'r1');
         INSERT INTO reviews VALUES (10, 2, 'a real customer loved it', NULL), (11, 3, 'a synthetic review', 'r1');",
    )
    .await;
    let reviews_before = db.dump("reviews", &["id", "product_id", "body", "synthetic_run_id"]).await;

    let dry = cleanup(url, &options(&["products", "reviews"], run("r1"), true), &mut |_| {}).await.unwrap();
    let real = cleanup(url, &options(&["products", "reviews"], run("r1"), false), &mut |_| {}).await.unwrap();
    assert_eq!(outcome(&dry), outcome(&real), "the dry run predicts the run");
    assert_eq!(
        outcome(&real),
        [("reviews".to_owned(), 1, 0), ("products".to_owned(), 1, 1)],
        "the synthetic review and product 3 go; product 2 is held"
    );
    assert_eq!((real.total_rows(), real.total_held(), real.fully_purged()), (2, 1, false));
    let held = &real.tables[1].held_rows;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].key, "2");
    assert_eq!(held[0].held_by.len(), 1);
    let holder = &held[0].held_by[0];
    assert_eq!(
        (holder.table.as_str(), holder.key.as_str(), holder.on_delete),
        ("reviews", "10", OnDelete::Cascade)
    );

    let reviews_after = db.dump("reviews", &["id", "product_id", "body", "synthetic_run_id"]).await;
    assert_eq!(reviews_after, reviews_before[..1], "the real review is intact");
    let products: Vec<i64> =
        db.dump("products", &["id", "synthetic_run_id"]).await.into_iter().map(|r| r.0).collect();
    assert_eq!(products, [1, 2]);

    // The binary: held rows are printed and in the JSON, and the exit code is 3.
    let bin = env!("CARGO_BIN_EXE_synth-cleanup");
    let out = Command::new(bin)
        .args(["--database-url", url, "--tables", "products,reviews", "--run", "r1", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["total_held"], 1);
    assert_eq!(summary["fully_purged"], false);
    assert_eq!(summary["tables"][1]["held_rows"][0]["held_by"][0]["on_delete"], "CASCADE");
    let out = Command::new(bin)
        .args(["--database-url", url, "--tables", "products", "--run", "r1", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("products 2 <- reviews 10"), "{text}");
    assert_eq!(
        db.dump("reviews", &["id", "product_id", "body", "synthetic_run_id"]).await,
        reviews_before[..1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reproduction_on_postgres() {
    let Some(url) = pg_database("reproduction") else { return };
    reproduction(&url).await;
}

#[tokio::test]
async fn reproduction_on_sqlite() {
    reproduction(&sqlite_database("reproduction")).await;
}

/// Every ON DELETE action, from an untagged row in a table outside `--tables`: the parent is
/// held, the referencing row is byte-for-byte unchanged; the row no one references goes.
async fn every_action_holds(url: &str) {
    let mut db = Db::open(url).await;
    for (i, action) in ["CASCADE", "SET NULL", "SET DEFAULT", "RESTRICT", "NO ACTION"].iter().enumerate() {
        db.exec(&format!(
            "CREATE TABLE p{i} (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
             CREATE TABLE c{i} (id INTEGER PRIMARY KEY, p INTEGER DEFAULT 1 REFERENCES p{i}(id) ON DELETE {action});
             INSERT INTO p{i} VALUES (1, NULL), (2, 'r1'), (3, 'r1');
             INSERT INTO c{i} VALUES (1, 2), (2, NULL), (3, 1);"
        ))
        .await;
        let before = db.dump(&format!("c{i}"), &["id", "p"]).await;
        let report =
            cleanup(url, &options(&[&format!("p{i}")], run("r1"), false), &mut |_| {}).await.unwrap();
        assert_eq!((report.total_rows(), report.total_held()), (1, 1), "{action}");
        assert_eq!(db.dump(&format!("c{i}"), &["id", "p"]).await, before, "{action} changed a row");
        let left: Vec<i64> =
            db.dump(&format!("p{i}"), &["id", "synthetic_run_id"]).await.into_iter().map(|r| r.0).collect();
        assert_eq!(left, [1, 2], "{action}");
        let holder = &report.tables[0].held_rows[0].held_by[0];
        assert_eq!((holder.table.as_str(), holder.key.as_str()), (format!("c{i}").as_str(), "1"));
        assert_eq!(holder.on_delete.as_sql(), *action);
    }
}

/// A multi-column foreign key, from a table outside `--tables`, to a table whose primary key
/// has two columns: the held row is listed by its key values.
async fn composite_keys(url: &str) {
    let mut db = Db::open(url).await;
    db.exec(
        "CREATE TABLE carts (shop INTEGER, id INTEGER, synthetic_run_id TEXT, PRIMARY KEY (shop, id));
         CREATE TABLE notes (id INTEGER PRIMARY KEY, shop INTEGER, cart INTEGER, FOREIGN KEY (shop, cart) REFERENCES carts (shop, id) ON DELETE CASCADE);
         INSERT INTO carts VALUES (1, 1, 'r1'), (1, 2, 'r1'), (2, 1, 'r1');
         INSERT INTO notes VALUES (1, 1, 2), (2, 2, NULL);",
    )
    .await;
    let report = cleanup(url, &options(&["carts"], run("r1"), false), &mut |_| {}).await.unwrap();
    assert_eq!((report.total_rows(), report.total_held()), (2, 1));
    assert_eq!(report.tables[0].held_rows[0].key, "(1,2)");
    assert_eq!(db.dump("notes", &["id", "shop", "cart"]).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys_on_postgres() {
    let Some(url) = pg_database("composite") else { return };
    composite_keys(&url).await;
}

#[tokio::test]
async fn composite_keys_on_sqlite() {
    composite_keys(&sqlite_database("composite")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_holds_on_postgres() {
    let Some(url) = pg_database("actions") else { return };
    every_action_holds(&url).await;
}

#[tokio::test]
async fn every_action_holds_on_sqlite() {
    every_action_holds(&sqlite_database("actions")).await;
}

/// Holding propagates: a tagged order whose tagged item is reviewed by a real customer stays,
/// and so does the item; a tagged comment thread goes leaves first, except the branch a real
/// reply hangs from.
async fn multi_level_and_self_reference(url: &str) {
    let mut db = Db::open(url).await;
    db.exec(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE TABLE items (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL REFERENCES orders(id) ON DELETE CASCADE, synthetic_run_id TEXT);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, item_id INTEGER REFERENCES items(id) ON DELETE SET NULL, synthetic_run_id TEXT);
         CREATE TABLE comments (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES comments(id) ON DELETE CASCADE, synthetic_run_id TEXT);
         INSERT INTO orders VALUES (1, 'r1'), (2, 'r1'), (3, NULL);
         INSERT INTO items VALUES (10, 1, 'r1'), (11, 1, 'r1'), (20, 2, 'r1'), (30, 3, NULL);
         INSERT INTO reviews VALUES (100, 11, NULL), (101, 20, 'r1');
         INSERT INTO comments VALUES (1, NULL, 'r1'), (2, 1, 'r1'), (3, 2, 'r1'), (4, 3, 'r1'),
                                     (5, NULL, 'r1'), (6, 5, 'r1'), (7, 6, NULL), (8, 5, 'r1'), (9, NULL, NULL);",
    )
    .await;
    let tables = ["orders", "items", "reviews", "comments"];
    let mut dry = options(&tables, run("r1"), true);
    dry.batch_size = 1;
    let mut real = dry.clone();
    real.dry_run = false;
    let predicted = cleanup(url, &dry, &mut |_| {}).await.unwrap();
    let report = cleanup(url, &real, &mut |_| {}).await.unwrap();
    assert_eq!(outcome(&predicted), outcome(&report));
    let mut got = outcome(&report);
    got.sort();
    assert_eq!(
        got,
        [
            ("comments".to_owned(), 5, 2), // 4, 3, 2, 1 and 8 go; 6 (real reply 7) and 5 stay
            ("items".to_owned(), 2, 1),    // 10 and 20 go, 11 (real review 100) stays
            ("orders".to_owned(), 1, 1),   // 2 goes, 1 stays for its item 11
            ("reviews".to_owned(), 1, 0),
        ]
    );
    let ids = |rows: Vec<(i64, Option<String>, String)>| rows.into_iter().map(|r| r.0).collect::<Vec<_>>();
    assert_eq!(ids(db.dump("orders", &["id", "synthetic_run_id"]).await), [1, 3]);
    assert_eq!(ids(db.dump("items", &["id", "synthetic_run_id"]).await), [11, 30]);
    assert_eq!(ids(db.dump("reviews", &["id", "synthetic_run_id"]).await), [100]);
    assert_eq!(ids(db.dump("comments", &["id", "synthetic_run_id"]).await), [5, 6, 7, 9]);
    let order = report.tables.iter().find(|t| t.table == "orders").unwrap();
    assert_eq!(order.held_rows[0].held_by[0].key, "11", "the order is held by its held item");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_level_and_self_reference_on_postgres() {
    let Some(url) = pg_database("multi_level") else { return };
    multi_level_and_self_reference(&url).await;
}

#[tokio::test]
async fn multi_level_and_self_reference_on_sqlite() {
    multi_level_and_self_reference(&sqlite_database("multi_level")).await;
}

/// A DELETE trigger could change rows the cleanup cannot see: refused, naming the trigger,
/// nothing deleted, unless allowed.
async fn triggers(url: &str, create_trigger: &str) {
    let mut db = Db::open(url).await;
    db.exec(
        "CREATE TABLE products (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT);
         INSERT INTO products VALUES (1, NULL), (2, 'r1');",
    )
    .await;
    db.exec(create_trigger).await;
    for dry_run in [true, false] {
        let err = cleanup(url, &options(&["products"], run("r1"), dry_run), &mut |_| {}).await.unwrap_err();
        assert!(
            matches!(&err, CleanupError::DeleteTrigger { table, trigger } if table == "products" && trigger == "products_audit"),
            "{err}"
        );
        assert!(err.to_string().contains("--allow-triggers"), "{err}");
    }
    assert_eq!(db.dump("products", &["id", "synthetic_run_id"]).await.len(), 2, "nothing was deleted");
    let mut allowed = options(&["products"], run("r1"), false);
    allowed.allow_triggers = true;
    assert_eq!(cleanup(url, &allowed, &mut |_| {}).await.unwrap().total_rows(), 1);
    assert_eq!(db.dump("audit", &["id", "what"]).await.len(), 1, "the trigger ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_triggers_on_postgres() {
    let Some(url) = pg_database("triggers") else { return };
    triggers(
        &url,
        "CREATE FUNCTION audit_delete() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO audit (id, what) VALUES (OLD.id, 'deleted'); RETURN OLD; END $$;
         CREATE TRIGGER products_audit AFTER DELETE ON products FOR EACH ROW EXECUTE FUNCTION audit_delete();",
    )
    .await;
}

#[tokio::test]
async fn delete_triggers_on_sqlite() {
    triggers(
        &sqlite_database("triggers"),
        "CREATE TRIGGER products_audit AFTER DELETE ON products BEGIN INSERT INTO audit (id, what) VALUES (OLD.id, 'deleted'); END;",
    )
    .await;
}

// ---- Property: random schemas -------------------------------------------------------------

const ACTIONS: [&str; 5] = ["CASCADE", "SET NULL", "SET DEFAULT", "RESTRICT", "NO ACTION"];
const TAGS: [Option<&str>; 3] = [None, Some("ra"), Some("rb")];

/// A random schema: table `i` has up to two foreign keys to tables `0..=i` (itself included),
/// each with a random ON DELETE action; the last table may be left out of `--tables`.
#[derive(Clone, Debug)]
struct Case {
    /// Per table, its foreign keys: (referenced table, action).
    fks: Vec<Vec<(usize, usize)>>,
    /// Per table, its rows: (tag, a choice among the referenceable rows per foreign key).
    rows: Vec<Vec<(usize, [Option<usize>; 2])>>,
    last_listed: bool,
    all_synthetic: bool,
    batch: u32,
}

fn case() -> impl Strategy<Value = Case> {
    (2..5usize)
        .prop_flat_map(|n| {
            let fks = (0..n)
                .map(|i| prop::collection::vec((0..=i, 0..ACTIONS.len()), 0..=2).boxed())
                .collect::<Vec<_>>();
            let row = (
                0..TAGS.len(),
                [prop::option::weighted(0.7, 0..16usize), prop::option::weighted(0.7, 0..16usize)],
            );
            let rows = prop::collection::vec(prop::collection::vec(row, 0..8), n);
            (fks, rows, any::<bool>(), prop::bool::weighted(0.25), 1..4u32)
        })
        .prop_map(|(fks, rows, last_listed, all_synthetic, batch)| Case {
            fks,
            rows,
            last_listed,
            all_synthetic,
            batch,
        })
}

/// A row's tag and what it references: (table, id), id 0 for NULL.
type ResolvedRow = (Option<&'static str>, Vec<(usize, i64)>);

impl Case {
    fn columns(&self, table: usize) -> Vec<String> {
        let mut c = vec!["id".to_owned(), "payload".to_owned()];
        c.extend((0..self.fks[table].len()).map(|k| format!("fk{k}")));
        c.push("synthetic_run_id".to_owned());
        c
    }

    fn listed(&self) -> Vec<String> {
        let n = self.fks.len() - usize::from(!self.last_listed);
        (0..n).map(|i| format!("t{i}")).collect()
    }

    /// Per table, per row (id = index + 1): its tag and its references (table, id).
    fn resolve(&self) -> Vec<Vec<ResolvedRow>> {
        let mut out: Vec<Vec<ResolvedRow>> = Vec::new();
        for (i, rows) in self.rows.iter().enumerate() {
            let mut table = Vec::new();
            for (r, (tag, choices)) in rows.iter().enumerate() {
                let mut refs = Vec::new();
                for (k, &(target, _)) in self.fks[i].iter().enumerate() {
                    // Rows of earlier tables, or earlier rows of this one.
                    let candidates = if target == i { r } else { self.rows[target].len() };
                    if let Some(choice) = choices[k]
                        && candidates > 0
                    {
                        refs.push((target, i64::try_from(choice % candidates).unwrap() + 1));
                    } else {
                        refs.push((target, 0)); // NULL
                    }
                }
                table.push((TAGS[*tag], refs));
            }
            out.push(table);
        }
        out
    }

    fn ddl_and_rows(&self, pg: bool) -> String {
        let int = if pg { "bigint" } else { "INTEGER" };
        let mut sql = String::new();
        for (i, fks) in self.fks.iter().enumerate() {
            let mut cols = vec![format!("id {int} PRIMARY KEY"), "payload TEXT".to_owned()];
            for (k, &(target, action)) in fks.iter().enumerate() {
                cols.push(format!("fk{k} {int} REFERENCES t{target}(id) ON DELETE {}", ACTIONS[action]));
            }
            cols.push("synthetic_run_id TEXT".to_owned());
            sql.push_str(&format!("CREATE TABLE t{i} ({});\n", cols.join(", ")));
        }
        for (i, rows) in self.resolve().iter().enumerate() {
            for (r, (tag, refs)) in rows.iter().enumerate() {
                let mut values = vec![(r + 1).to_string(), format!("'t{i} r{r} ünï ''q'''")];
                values.extend(
                    refs.iter().map(|&(_, id)| if id == 0 { "NULL".to_owned() } else { id.to_string() }),
                );
                values.push(tag.map_or("NULL".to_owned(), |t| format!("'{t}'")));
                sql.push_str(&format!("INSERT INTO t{i} VALUES ({});\n", values.join(", ")));
            }
        }
        sql
    }

    /// The rows a safe cleanup removes: tagged rows of listed tables, taken while no remaining
    /// row references them, until none can go (what is left of them must be reported held).
    fn expected_gone(&self) -> BTreeSet<(usize, i64)> {
        let rows = self.resolve();
        let listed = self.listed().len();
        let selected = |tag: Option<&str>| if self.all_synthetic { tag.is_some() } else { tag == Some("ra") };
        let mut gone = BTreeSet::new();
        loop {
            let mut changed = false;
            for (i, table) in rows.iter().enumerate().take(listed) {
                for (r, (tag, _)) in table.iter().enumerate() {
                    let me = (i, i64::try_from(r).unwrap() + 1);
                    if !selected(*tag) || gone.contains(&me) {
                        continue;
                    }
                    let referenced = rows.iter().enumerate().any(|(ci, ct)| {
                        ct.iter().enumerate().any(|(cr, (_, refs))| {
                            !gone.contains(&(ci, i64::try_from(cr).unwrap() + 1)) && refs.contains(&me)
                        })
                    });
                    if !referenced {
                        gone.insert(me);
                        changed = true;
                    }
                }
            }
            if !changed {
                return gone;
            }
        }
    }
}

type Dump = Vec<Vec<(i64, Option<String>, String)>>;

async fn dump_all(db: &mut Db, case: &Case) -> Dump {
    let mut out = Vec::new();
    for i in 0..case.fks.len() {
        let columns = case.columns(i);
        let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        out.push(db.dump(&format!("t{i}"), &columns).await);
    }
    out
}

async fn check_case(url: &str, db: &mut Db, case: &Case) {
    db.exec(&case.ddl_and_rows(matches!(db, Db::Pg(_)))).await;
    let before = dump_all(db, case).await;
    let listed = case.listed();
    let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
    let selector = if case.all_synthetic { Selector::AllSynthetic } else { run("ra") };
    let mut o = options(&listed, selector, true);
    o.batch_size = case.batch;
    let predicted = cleanup(url, &o, &mut |_| {}).await.unwrap();
    assert_eq!(dump_all(db, case).await, before, "the dry run changed something");
    o.dry_run = false;
    let report = cleanup(url, &o, &mut |_| {}).await.unwrap();
    let after = dump_all(db, case).await;
    assert_eq!(outcome(&predicted), outcome(&report), "the dry run did not predict the run");

    // Every untagged and other-run row, and every row of an unlisted table: byte for byte.
    let deletable = |t: usize, tag: &Option<String>| {
        t < listed.len() && if case.all_synthetic { tag.is_some() } else { tag.as_deref() == Some("ra") }
    };
    for (t, (b, a)) in before.iter().zip(&after).enumerate() {
        let keep = |rows: &Vec<(i64, Option<String>, String)>| {
            rows.iter().filter(|(_, tag, _)| !deletable(t, tag)).cloned().collect::<Vec<_>>()
        };
        assert_eq!(keep(b), keep(a), "t{t}: a row that is not the run's changed");
    }
    // Exactly the rows that could go safely went; what is left of the run is reported held.
    let gone: BTreeSet<(usize, i64)> = before
        .iter()
        .enumerate()
        .flat_map(|(t, rows)| rows.iter().map(move |r| (t, r.0)))
        .filter(|(t, id)| !after[*t].iter().any(|r| r.0 == *id))
        .collect();
    assert_eq!(gone, case.expected_gone());
    for t in &report.tables {
        let i: usize = t.table[1..].parse().unwrap();
        let left = after[i].iter().filter(|(_, tag, _)| deletable(i, tag)).count();
        assert_eq!(t.held, u64::try_from(left).unwrap(), "{}: held count", t.table);
        assert_eq!(t.rows, u64::try_from(before[i].len() - after[i].len()).unwrap());
        assert!(t.held_rows.len() <= left && (left == 0 || !t.held_rows.is_empty()));
    }
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() }
}

#[test]
fn random_schemas_on_postgres_never_change_another_row() {
    let Some(url) = pg_database("property") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    proptest!(config(), |(case in case())| {
        rt.block_on(async {
            let mut db = Db::open(&url).await;
            db.exec("DROP SCHEMA public CASCADE; CREATE SCHEMA public;").await;
            check_case(&url, &mut db, &case).await;
        });
    });
}

#[test]
fn random_schemas_on_sqlite_never_change_another_row() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let n = AtomicUsize::new(0);
    proptest!(config(), |(case in case())| {
        let url = sqlite_database(&format!("property-{}", n.fetch_add(1, Ordering::Relaxed)));
        rt.block_on(async {
            let mut db = Db::open(&url).await;
            check_case(&url, &mut db, &case).await;
        });
    });
}

/// A real review inserted while the cleanup runs: its transaction holds the product (a key
/// share lock) when the batch wants it. The batch waits, and then decides with what is
/// committed by then: the product is held, the review survives. Deciding on the snapshot
/// taken before the wait would delete the product and cascade into the review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_that_appears_during_the_batch_holds_the_row_on_postgres() {
    let Some(url) = pg_database("race") else { return };
    let mut db = Db::open(&url).await;
    db.exec(
        "CREATE TABLE products (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_id INTEGER REFERENCES products(id) ON DELETE CASCADE, body TEXT);
         INSERT INTO products VALUES (1, NULL), (2, 'r1'), (3, 'r1');",
    )
    .await;
    let mut customer = PgConnection::connect(&url).await.unwrap();
    let mut tx = customer.begin().await.unwrap();
    sqlx::query("INSERT INTO reviews VALUES (10, 2, 'written during the cleanup')")
        .execute(&mut *tx)
        .await
        .unwrap();

    let mut o = options(&["products"], run("r1"), false);
    o.lock_timeout = Duration::from_secs(20);
    let commit_later = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        tx.commit().await.unwrap();
    };
    let mut no_progress = |_: synth_guards::cleanup::Progress<'_>| {};
    let (report, ()) = tokio::join!(cleanup(&url, &o, &mut no_progress), commit_later);
    let report = report.unwrap();
    assert!(report.elapsed >= Duration::from_millis(600), "the batch should have waited for the customer");
    assert_eq!((report.total_rows(), report.total_held()), (1, 1));
    assert_eq!(
        db.dump("reviews", &["id", "product_id", "body"]).await.len(),
        1,
        "the review was cascaded away"
    );
}

/// A least-privilege cleanup role: missing privileges stop the run before anything is deleted,
/// saying what to grant, instead of a permission error half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_privileges_are_named_before_anything_is_deleted_on_postgres() {
    let Some(url) = pg_database("privileges") else { return };
    let mut db = Db::open(&url).await;
    db.exec(
        "CREATE TABLE products (id INTEGER PRIMARY KEY, synthetic_run_id TEXT);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_id INTEGER REFERENCES products(id) ON DELETE CASCADE);
         INSERT INTO products VALUES (1, NULL), (2, 'r1'), (3, 'r1');
         INSERT INTO reviews VALUES (10, 2);
         CREATE ROLE cleanup_fk_role LOGIN;
         GRANT SELECT, DELETE ON products TO cleanup_fk_role;",
    )
    .await;
    let role_url = url.replacen("postgres@", "cleanup_fk_role@", 1);
    let err = cleanup(&role_url, &options(&["products"], run("r1"), true), &mut |_| {}).await.unwrap_err();
    assert!(
        matches!(&err, CleanupError::CannotReadReferences { table, referenced } if table == "reviews" && referenced == "products"),
        "{err}"
    );
    db.exec("GRANT SELECT ON reviews TO cleanup_fk_role").await;
    for dry_run in [true, false] {
        // The dry run locks nothing, but it says what the run would do: refuse.
        let err =
            cleanup(&role_url, &options(&["products"], run("r1"), dry_run), &mut |_| {}).await.unwrap_err();
        assert!(matches!(&err, CleanupError::CannotLockRows { table } if table == "products"), "{err}");
        assert!(err.to_string().contains("GRANT UPDATE ON products"), "{err}");
    }
    assert_eq!(db.dump("products", &["id", "synthetic_run_id"]).await.len(), 3, "nothing was deleted");
    db.exec("GRANT UPDATE ON products TO cleanup_fk_role").await;
    let report = cleanup(&role_url, &options(&["products"], run("r1"), false), &mut |_| {}).await.unwrap();
    assert_eq!((report.total_rows(), report.total_held()), (1, 1));
}
