//! A pooled PostgreSQL connection never carries a run id into a real request: synthetic and real
//! requests interleaved through one pool (size 1 and 4), through every API a service uses.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{sync::OnceLock, time::Duration};

use proptest::prelude::*;
use sqlx::{PgPool, postgres::PgPoolOptions};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Synthetic, SyntheticFutureExt};
use synth_guards::db::postgres::{add_tag_column, begin_tagged};
use synth_testkit::pg::PgCluster;

fn synthetic(run: &str) -> Synthetic {
    let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    Signer::new(keys).mint_synthetic(Origin::Load, &RunId::new(run).unwrap(), Duration::from_secs(600))
}

fn cluster() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start("synth-guards pg tagging tests")).as_ref()
}

/// One request's write, the way a service might do it.
#[derive(Clone, Copy, Debug)]
enum Write {
    /// A synthetic request inside `begin_tagged`, committed.
    SyntheticTagged(usize),
    /// A synthetic request inside `begin_tagged`, rolled back (nothing stays).
    SyntheticRolledBack(usize),
    /// A synthetic request inside `begin_tagged`, dropped without commit (nothing stays).
    SyntheticDropped(usize),
    /// A real request inside `begin_tagged`.
    RealTagged,
    /// A real request with a plain `execute(&pool)`.
    RealPlain,
    /// A real request in a plain `pool.begin()` transaction.
    RealBegin,
    /// A real request on a plain `pool.acquire()` connection.
    RealAcquire,
}

const RUNS: [&str; 3] = ["run-a", "run-b", "run-c"];

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        (0..3usize).prop_map(Write::SyntheticTagged),
        (0..3usize).prop_map(Write::SyntheticRolledBack),
        (0..3usize).prop_map(Write::SyntheticDropped),
        Just(Write::RealTagged),
        Just(Write::RealPlain),
        Just(Write::RealBegin),
        Just(Write::RealAcquire),
    ]
}

const INSERT: &str = "INSERT INTO orders (label) VALUES ($1)";

/// Performs `w` labelled `label`; returns the tag the row must carry, or `None` if no row stays.
async fn perform(pool: &PgPool, w: Write, label: String) -> Option<Option<&'static str>> {
    match w {
        Write::SyntheticTagged(r) => {
            async {
                let mut tx = begin_tagged(pool).await.unwrap();
                sqlx::query(INSERT).bind(&label).execute(&mut *tx).await.unwrap();
                // Hold the connection a moment so other requests interleave with this one.
                tokio::task::yield_now().await;
                tx.commit().await.unwrap();
            }
            .in_synthetic_scope(&synthetic(RUNS[r]))
            .await;
            Some(Some(RUNS[r]))
        }
        Write::SyntheticRolledBack(r) | Write::SyntheticDropped(r) => {
            async {
                let mut tx = begin_tagged(pool).await.unwrap();
                sqlx::query(INSERT).bind(&label).execute(&mut *tx).await.unwrap();
                if matches!(w, Write::SyntheticRolledBack(_)) {
                    tx.rollback().await.unwrap();
                }
            }
            .in_synthetic_scope(&synthetic(RUNS[r]))
            .await;
            None
        }
        Write::RealTagged => {
            let mut tx = begin_tagged(pool).await.unwrap();
            sqlx::query(INSERT).bind(&label).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            Some(None)
        }
        Write::RealPlain => {
            sqlx::query(INSERT).bind(&label).execute(pool).await.unwrap();
            Some(None)
        }
        Write::RealBegin => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(INSERT).bind(&label).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            Some(None)
        }
        Write::RealAcquire => {
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query(INSERT).bind(&label).execute(&mut *conn).await.unwrap();
            Some(None)
        }
    }
}

/// Runs `writes` through a pool of `size`, `parallel` at a time, and checks every row's tag.
async fn check_interleaving(url: &str, size: u32, writes: &[Write], parallel: usize) {
    let pool = PgPoolOptions::new().max_connections(size).connect(url).await.unwrap();
    sqlx::query("TRUNCATE orders").execute(&pool).await.unwrap();
    let mut expected = Vec::new();
    for (chunk_no, chunk) in writes.chunks(parallel.max(1)).enumerate() {
        let futures = chunk.iter().enumerate().map(|(i, w)| {
            let label = format!("{chunk_no}.{i} {w:?}");
            let pool = pool.clone();
            let w = *w;
            async move { (label.clone(), perform(&pool, w, label).await) }
        });
        for (label, tag) in futures_util::future::join_all(futures).await {
            if let Some(tag) = tag {
                expected.push((label, tag.map(str::to_owned)));
            }
        }
    }
    let mut rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT label, synthetic_run_id FROM orders").fetch_all(&pool).await.unwrap();
    rows.sort();
    expected.sort();
    assert_eq!(rows, expected, "pool of {size}: {writes:?}");
    pool.close().await;
}

async fn schema(url: &str) {
    let pool = PgPool::connect(url).await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, label text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    add_tag_column(&mut pool.acquire().await.unwrap(), "orders").await.unwrap();
    pool.close().await;
}

/// The red team's case: a synthetic request on the one pooled connection, then real requests
/// through every API. With a session-wide setting, each of them was tagged `run-a`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_request_after_a_synthetic_one_on_the_same_connection_is_untagged() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("after_synthetic");
    schema(&url).await;
    let writes = [
        Write::SyntheticTagged(0),
        Write::RealPlain,
        Write::SyntheticDropped(1),
        Write::RealBegin,
        Write::SyntheticRolledBack(2),
        Write::RealAcquire,
        Write::SyntheticTagged(1),
        Write::RealTagged,
    ];
    check_interleaving(&url, 1, &writes, 1).await;
}

#[test]
fn random_interleavings_through_pools_of_one_and_four_never_leak_a_tag() {
    let Some(cluster) = cluster() else { return };
    let url = cluster.create_database("interleavings");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(schema(&url));
    let config = ProptestConfig { cases: 24, ..ProptestConfig::default() };
    proptest!(config, |(writes in prop::collection::vec(write(), 1..24), size in prop_oneof![Just(1u32), Just(4u32)], parallel in 1..6usize)| {
        rt.block_on(check_interleaving(&url, size, &writes, parallel));
    });
}
