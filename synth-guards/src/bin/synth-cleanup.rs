//! `synth-cleanup`: delete the rows synthetic traffic wrote, and nothing else.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{ArgGroup, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use synth_ctx::RunId;
use synth_guards::cleanup::{CleanupError, CleanupOptions, Progress, Report, Selector, cleanup};

const AFTER_HELP: &str = "\
Only rows whose tag column is not NULL (and equals --run, if given) are deleted, in batches of
short transactions with a lock timeout. Interrupted at any point, run it again to finish.

A tagged row that any other row still references (through a foreign key from any table, listed
or not) is held: left in place, counted and listed with the rows that hold it, so no ON DELETE
CASCADE / SET NULL / SET DEFAULT ever reaches another row. Tables with DELETE triggers are
refused unless --allow-triggers. --dry-run takes the same decisions without deleting.

Examples:
  # What would a run's cleanup delete?
  synth-cleanup --database-url postgres://app@db/shop --tables order_items,orders --run r42 --dry-run
  # Purge every synthetic row, gently
  synth-cleanup --database-url sqlite://shop.db --tables order_items,orders --all-synthetic --batch-size 500 --pause 50ms

A table listed twice (or with one of its partitions) is refused, and so is a view. On PostgreSQL a table's
partitions and inheriting tables are cleaned with it (as DELETE FROM the table would), and their
foreign keys and triggers are checked too; a referencing table whose row-level security applies
to the cleanup's role is refused. If triggers, foreign keys or partitions change mid-run, the
cleanup stops before the next batch.

Exit codes: 0 done (or dry run), 1 stopped part-way (database error, busy table or a schema
change: run again), 2 bad usage or configuration (nothing was deleted), 3 done, but some rows
were held (dry run: would be held): the run is not fully purged; see the listing of what holds
them.";

/// Delete the rows synthetic traffic wrote (tagged rows), children before parents, in batches;
/// never a row that another row references.
#[derive(Debug, Parser)]
#[command(name = "synth-cleanup", version, about, after_help = AFTER_HELP)]
#[command(group(ArgGroup::new("which").required(true).args(["run", "all_synthetic"])))]
struct Cli {
    /// postgres://… or sqlite://…
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Tables to clean, comma-separated (ordered children first by their foreign keys).
    #[arg(long, value_delimiter = ',', required = true)]
    tables: Vec<String>,
    /// The tag column.
    #[arg(long, default_value = synth_guards::db::TAG_COLUMN)]
    tag_column: String,
    /// Delete the rows of this run only.
    #[arg(long)]
    run: Option<String>,
    /// Delete every tagged row, whatever its run.
    #[arg(long)]
    all_synthetic: bool,
    /// Count what would be deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Rows per batch.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch_size: u32,
    /// Pause between batches, e.g. 10ms, 1s.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pause: Duration,
    /// How long a batch may wait for a lock before it gives way and retries.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    lock_timeout: Duration,
    /// Delete from tables that have DELETE triggers (refused otherwise: a trigger can change
    /// rows the cleanup cannot see).
    #[arg(long)]
    allow_triggers: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration; write e.g. 10ms, 2s, 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{s}`: unknown unit, use ms, s or m")),
    }
}

fn summary_json(report: &Report) -> serde_json::Value {
    json!({
        "dry_run": report.dry_run,
        "total_rows": report.total_rows(),
        "total_held": report.total_held(),
        "fully_purged": report.fully_purged(),
        "elapsed_ms": report.elapsed.as_millis(),
        "tables": report.tables.iter().map(|t| json!({
            "table": t.table,
            "rows": t.rows,
            "held": t.held,
            "held_rows": t.held_rows.iter().map(|h| json!({
                "key": h.key,
                "held_by": h.held_by.iter().map(|b| json!({
                    "table": b.table,
                    "key": b.key,
                    "constraint": b.constraint,
                    "on_delete": b.on_delete.as_sql(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "batches": t.batches,
            "lock_retries": t.lock_retries,
            "longest_batch_ms": t.longest_batch.as_secs_f64() * 1000.0,
            "elapsed_ms": t.elapsed.as_millis(),
        })).collect::<Vec<_>>(),
    })
}

fn print_table(report: &Report) {
    let verb = if report.dry_run { "would delete" } else { "deleted" };
    println!(
        "{:<32} {:>12} {:>8} {:>9} {:>14} {:>10}",
        "table", verb, "held", "batches", "longest batch", "time"
    );
    for t in &report.tables {
        println!(
            "{:<32} {:>12} {:>8} {:>9} {:>11.1} ms {:>8.2} s",
            t.table,
            t.rows,
            t.held,
            t.batches,
            t.longest_batch.as_secs_f64() * 1000.0,
            t.elapsed.as_secs_f64()
        );
    }
    println!(
        "{:<32} {:>12} {:>8}   in {:.2} s",
        "total",
        report.total_rows(),
        report.total_held(),
        report.elapsed.as_secs_f64()
    );
    if report.fully_purged() {
        return;
    }
    let held = report.total_held();
    let (rows, pronoun) = match (held, report.dry_run) {
        (1, true) => ("row would be", "it"),
        (1, false) => ("row was", "it"),
        (_, true) => ("rows would be", "them"),
        (_, false) => ("rows were", "them"),
    };
    println!("\n{held} {rows} held: other rows reference {pronoun} (not deleted, so nothing else changed):");
    for t in report.tables.iter().filter(|t| t.held > 0) {
        for h in &t.held_rows {
            let by: Vec<String> = h
                .held_by
                .iter()
                .map(|b| format!("{} {} ({}, ON DELETE {})", b.table, b.key, b.constraint, b.on_delete))
                .collect();
            println!("  {} {} <- {}", t.table, h.key, by.join("; "));
        }
        let unlisted = t.held - u64::try_from(t.held_rows.len()).unwrap_or(u64::MAX).min(t.held);
        if unlisted > 0 {
            println!("  {} ... and {unlisted} more", t.table);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<(Report, bool)> {
    let selector = match &cli.run {
        Some(run) => Selector::Run(RunId::new(run).context("--run")?),
        None => Selector::AllSynthetic,
    };
    let mut options = CleanupOptions::new(cli.tables.clone(), selector);
    options.tag_column = cli.tag_column.clone();
    options.dry_run = cli.dry_run;
    options.batch_size = cli.batch_size;
    options.pause = cli.pause;
    options.lock_timeout = cli.lock_timeout;
    options.allow_triggers = cli.allow_triggers;

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<24} [{bar:30}] {pos}/{len} rows ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut on_progress = |p: Progress<'_>| match p {
        Progress::Counted { table, rows } => {
            bar.set_message(table.to_owned());
            bar.inc_length(rows);
        }
        Progress::Batch { rows, .. } => bar.inc(rows),
        _ => {}
    };
    let result = cleanup(&cli.database_url, &options, &mut on_progress).await;
    bar.finish_and_clear();
    let report = result.map_err(anyhow::Error::from)?;
    Ok((report, cli.json))
}

/// Exit code when rows were held: the run finished but is not fully purged.
const HELD: u8 = 3;

fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<CleanupError>() {
        // Stopped part-way: what went is gone, and running again finishes (or, after a schema
        // change, re-checks the new schema first).
        Some(
            CleanupError::Database { .. }
            | CleanupError::LockTimeout { .. }
            | CleanupError::SchemaChanged { .. },
        ) => 1,
        _ => 2,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok((report, json)) => {
            if json {
                println!("{}", summary_json(&report));
            } else {
                print_table(&report);
            }
            if report.fully_purged() { ExitCode::SUCCESS } else { ExitCode::from(HELD) }
        }
        Err(e) => {
            eprintln!("synth-cleanup: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
