//! `custom-journey URL`: runs the example journey against URL for a few seconds and exits with
//! the run's code (0 when every threshold holds).

use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use custom_journey::{BodySigner, DEMO_HMAC_SECRET, Settings, scenario};
use synth_ctx::KeyRing;

/// Runs a journey written in Rust (log in, view a product, order it if in stock; every body
/// signed with HMAC-SHA256) against URL, every request carrying a signed synthetic marker.
#[derive(Debug, Parser)]
#[command(
    name = "custom-journey",
    after_help = "Example:\n  \
        export SYNTH_KEYS=$(loadgen keygen --kid k1)   # the service under test must trust this key\n  \
        cargo run -p custom-journey -- http://127.0.0.1:8080 --duration 5s --rate 10\n\n\
        Exit codes: 0 the run passed, 1 a threshold failed, 2 bad usage or setup, 3 stopped or aborted,\n\
        4 the preflight or the signal check refused to start."
)]
struct Cli {
    /// Base URL of the service under test (http:// or https://).
    #[arg(value_parser = parse_target)]
    url: http::Uri,
    /// How long journeys keep arriving (`500ms`, `5s`, `1m`).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    duration: Duration,
    /// Journeys started per second.
    #[arg(long, default_value_t = 5.0, value_parser = parse_rate)]
    rate: f64,
    /// The secret your service checks `x-signature` with (default: the demo server's).
    #[arg(long, env = "CUSTOM_JOURNEY_HMAC_SECRET", hide_env_values = true)]
    hmac_secret: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("custom-journey: {e:#}");
            loadgen::Exit::Usage.into()
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The keys markers are signed with; the service under test verifies them with the same.
    let keys = KeyRing::from_env().context(
        "SYNTH_KEYS must hold the signing key: make one with `loadgen keygen --kid k1`, \
         export SYNTH_KEYS=<its output>, and give the same key to the service under test",
    )?;
    let secret = cli.hmac_secret.as_deref().map_or(DEMO_HMAC_SECRET, str::as_bytes);
    let settings = Settings { duration: cli.duration, rate: cli.rate, signer: BodySigner::new(secret)? };
    let scenario = scenario(cli.url, &settings)?;
    let config = loadgen::RunConfig::new(keys).with_ctrl_c(true);

    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let outcome = match runtime.block_on(loadgen::run(Arc::new(scenario), config)) {
        Ok(outcome) => outcome,
        // Nothing was sent; the error says why, and its exit code says which kind of failure.
        Err(e) => {
            eprintln!("custom-journey: {e}");
            return Ok(e.exit().into());
        }
    };
    println!("{}", outcome.summary());
    Ok(outcome.exit().into())
}

fn parse_target(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err("give an http:// or https:// URL with a host, e.g. http://127.0.0.1:8080".into()),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = loadgen::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("the run needs a duration above zero".into());
    }
    Ok(d)
}

/// Above this, this example is the wrong tool: raise it knowingly in your copy.
const MAX_RATE: f64 = 1000.0;

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(rate > 0.0 && rate <= MAX_RATE) {
        return Err(format!("give a rate above 0 and at most {MAX_RATE} journeys per second"));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked_before_anything_runs() {
        assert!(Cli::try_parse_from(["custom-journey", "ftp://x"]).is_err());
        assert!(Cli::try_parse_from(["custom-journey", "/path-only"]).is_err());
        for bad in ["0", "-1", "NaN", "inf", "1001", "fast"] {
            assert!(Cli::try_parse_from(["custom-journey", "http://h", "--rate", bad]).is_err(), "{bad}");
        }
        assert!(Cli::try_parse_from(["custom-journey", "http://h", "--duration", "0s"]).is_err());
        let cli = Cli::try_parse_from(["custom-journey", "http://h:1"]).unwrap();
        assert_eq!((cli.duration, cli.rate), (Duration::from_secs(3), 5.0));
    }
}
