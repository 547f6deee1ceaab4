//! One GET per journey, written in YAML or in Rust, for comparing the two's cost per request
//! (`scripts/bench-journeys` runs it pinned to one core against a server on the other, and
//! counts requests at the server).
//!
//! ```sh
//! cargo run --release -p loadgen --example journey_bench -- rust http://127.0.0.1:3010/ 50 5
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use std::{sync::Arc, time::Duration};

use loadgen::{Journey, Phase, RunConfig, Scenario};
use synth_ctx::{KeyRing, RunId};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, url, users, seconds] = &args[..] else {
        eprintln!("usage: journey_bench (yaml|rust) URL USERS SECONDS");
        std::process::exit(2);
    };
    let (users, seconds): (usize, u64) = (users.parse().unwrap(), seconds.parse().unwrap());
    let scenario = match mode.as_str() {
        "yaml" => Scenario::from_yaml(&format!(
            "target: {url}\nphases: [{{ duration: {seconds}s, users: {users} }}]\njourneys: [{{ name: get, steps: [{{ name: get, get: / }}] }}]\n"
        ))
        .unwrap(),
        "rust" => Scenario::new(url.parse().unwrap())
            .phase(Phase::Closed { duration: Duration::from_secs(seconds), users })
            .journey(Journey::new("get").run(|user| async move {
                user.get("/").name("get").send().await?;
                Ok(())
            })),
        other => panic!("mode `{other}`: yaml or rust"),
    };
    let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    let config = RunConfig::new(keys)
        .with_run_id(RunId::new("bench").unwrap())
        .with_quiet(true)
        .with_no_preflight(true);
    let outcome = loadgen::run(Arc::new(scenario), config).await.unwrap();
    let total = &outcome.to_json()["total"];
    println!("requests {} errors {}", total["requests"], total["errors"]);
}
