//! Cleanup throughput on a throwaway local PostgreSQL cluster: purge the synthetic rows mixed
//! into a table of real ones, and report rows per second and the longest batch.
//!
//! ```sh
//! cargo run --release -p synth-guards --features cleanup --example cleanup_bench -- 5000000 1000000 1000
//! #                                                                  total rows ^   tagged ^  batch ^
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use synth_ctx::RunId;
use synth_guards::cleanup::{CleanupOptions, Selector, cleanup};
use synth_testkit::pg::PgCluster;

#[tokio::main]
async fn main() {
    let args: Vec<u64> =
        std::env::args().skip(1).map(|a| a.parse().expect("numbers: total tagged batch")).collect();
    let total = args.first().copied().unwrap_or(5_000_000);
    let tagged = args.get(1).copied().unwrap_or(1_000_000);
    let batch = args.get(2).copied().unwrap_or(1000);
    let cluster = PgCluster::start("cleanup_bench").expect("PostgreSQL is needed for this benchmark");
    let url = cluster.url();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let every = total / tagged.max(1);
    let t = Instant::now();
    let setup = format!(
        "CREATE TABLE events (id bigserial PRIMARY KEY, body text, created_at timestamptz DEFAULT now(), synthetic_run_id text);
         INSERT INTO events (body, synthetic_run_id)
           SELECT 'event ' || g, CASE WHEN g % {every} = 0 THEN 'bench-run' END FROM generate_series(1, {total}) g;
         CREATE INDEX events_synthetic_run_id_idx ON events (synthetic_run_id) WHERE synthetic_run_id IS NOT NULL;"
    );
    sqlx::raw_sql(AssertSqlSafe(setup)).execute(&mut conn).await.unwrap();
    sqlx::raw_sql("VACUUM ANALYZE events").execute(&mut conn).await.unwrap();
    let tagged_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE synthetic_run_id IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    eprintln!("loaded {total} rows ({tagged_rows} tagged) in {:.1} s", t.elapsed().as_secs_f64());

    let mut options =
        CleanupOptions::new(vec!["events".into()], Selector::Run(RunId::new("bench-run").unwrap()));
    options.batch_size = u32::try_from(batch).unwrap();
    options.pause = Duration::ZERO;
    let report = cleanup(&url, &options, &mut |_| {}).await.unwrap();
    let t = &report.tables[0];
    println!(
        "deleted {} of {} rows in {:.2} s: {:.0} rows/s, {} batches of {}, longest batch {:.1} ms",
        t.rows,
        total,
        t.elapsed.as_secs_f64(),
        t.rows as f64 / t.elapsed.as_secs_f64(),
        t.batches,
        batch,
        t.longest_batch.as_secs_f64() * 1000.0
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut conn).await.unwrap();
    assert_eq!(u64::try_from(left).unwrap(), total - t.rows, "only tagged rows went");
}
