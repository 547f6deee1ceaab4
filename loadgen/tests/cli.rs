//! The key and token commands, in-process and as a real process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{path::PathBuf, process::Command};

use clap::Parser;
use loadgen::cli::{Cli, Exit, run};
use synth_ctx::{KeyRing, Verifier};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn keys_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys");
    std::fs::write(&path, content).unwrap();
    path
}

fn run_in_process(args: &[&str]) -> (anyhow::Result<Exit>, String) {
    let mut out = Vec::new();
    let result = run(Cli::try_parse_from(args).unwrap(), &mut out);
    (result, String::from_utf8(out).unwrap())
}

#[test]
fn keygen_prints_a_usable_key() {
    let (code, out) = run_in_process(&["loadgen", "keygen", "--kid", "ops-2"]);
    assert_eq!(code.unwrap(), Exit::Ok);
    let ring = KeyRing::parse(out.trim()).unwrap();
    assert_eq!(ring.signing_key_id().as_str(), "ops-2");
    // Two runs give two different secrets.
    let (_, again) = run_in_process(&["loadgen", "keygen", "--kid", "ops-2"]);
    assert_ne!(out, again);
    let (default_kid, _) = run_in_process(&["loadgen", "keygen"]);
    assert_eq!(default_kid.unwrap(), Exit::Ok);
    assert!(run_in_process(&["loadgen", "keygen", "--kid", "bad kid"]).0.is_err());
}

#[test]
fn mint_then_verify_in_process() {
    let keys = keys_file("mint", KEYS);
    let keys = keys.to_str().unwrap();
    let (code, token) = run_in_process(&[
        "loadgen",
        "token",
        "mint",
        "--run",
        "r42",
        "--origin",
        "dark",
        "--ttl",
        "10m",
        "--keys-file",
        keys,
    ]);
    assert_eq!(code.unwrap(), Exit::Ok);
    let s = Verifier::new(KeyRing::parse(KEYS).unwrap()).verify(token.trim()).unwrap();
    assert_eq!(s.run().as_str(), "r42");
    assert_eq!(s.origin().as_str(), "dark");
    assert!(s.expires_at() > 0);

    let (code, out) = run_in_process(&["loadgen", "token", "verify", token.trim(), "--keys-file", keys]);
    assert_eq!(code.unwrap(), Exit::Ok);
    assert!(out.starts_with("valid\n"), "{out}");
    assert!(out.contains("run:        r42"), "{out}");
    assert!(out.contains("origin:     dark"), "{out}");
    assert!(out.contains("key_id:     k1"), "{out}");

    let (code, out) =
        run_in_process(&["loadgen", "token", "verify", token.trim(), "--max-ttl", "5m", "--keys-file", keys]);
    assert_eq!(code.unwrap(), Exit::Refused);
    assert!(out.starts_with("refused (ttl_too_long)"), "{out}");
}

#[test]
fn verify_names_the_exact_reason() {
    let keys = keys_file("reasons", KEYS);
    let keys = keys.to_str().unwrap();
    let cases = [
        ("v1.load.r42.4102444800.k1.AIWragboMd7Ioyrggq-3wEKFkUN56JM0LU_J-5XHBDU", "bad_signature"),
        ("v1.load.r42.1000000000.k1.tIWragboMd7Ioyrggq-3wEKFkUN56JM0LU_J-5XHBDU", "bad_signature"),
        ("v1.load.r42.4102444800.k9.tIWragboMd7Ioyrggq-3wEKFkUN56JM0LU_J-5XHBDU", "unknown_key"),
        ("hello", "malformed"),
    ];
    for (token, reason) in cases {
        let (code, out) = run_in_process(&["loadgen", "token", "verify", token, "--keys-file", keys]);
        assert_eq!(code.unwrap(), Exit::Refused, "{token}");
        assert!(out.starts_with(&format!("refused ({reason})")), "{token}: {out}");
    }
}

#[test]
fn bad_config_is_a_usage_error_that_says_what_to_do() {
    let keys = keys_file("short", "k1:c2hvcnQ");
    let (code, _) =
        run_in_process(&["loadgen", "token", "mint", "--run", "r", "--keys-file", keys.to_str().unwrap()]);
    let msg = format!("{:#}", code.unwrap_err());
    assert!(msg.contains("use at least 32 random bytes"), "{msg}");
    assert!(!msg.contains("c2hvcnQ"), "secret echoed: {msg}");
    assert!(Cli::try_parse_from(["loadgen", "token", "mint", "--run", "r", "--ttl", "1x"]).is_err());
    assert!(Cli::try_parse_from(["loadgen", "token", "mint", "--run", "r", "--origin", "test"]).is_err());
}

#[test]
fn real_process_with_synth_keys_and_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_loadgen");
    let mint = Command::new(bin)
        .args(["token", "mint", "--run", "proc-1", "--ttl", "1h"])
        .env("SYNTH_KEYS", KEYS)
        .env_remove("SYNTH_KEYS_FILE")
        .output()
        .unwrap();
    assert!(mint.status.success(), "{}", String::from_utf8_lossy(&mint.stderr));
    let token = String::from_utf8(mint.stdout).unwrap();

    let ok =
        Command::new(bin).args(["token", "verify", token.trim()]).env("SYNTH_KEYS", KEYS).output().unwrap();
    assert_eq!(ok.status.code(), Some(0));

    let other_key = "k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8";
    let refused = Command::new(bin)
        .args(["token", "verify", token.trim()])
        .env("SYNTH_KEYS", other_key)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("bad_signature"));

    let unset = Command::new(bin)
        .args(["token", "mint", "--run", "x"])
        .env_remove("SYNTH_KEYS")
        .env_remove("SYNTH_KEYS_FILE")
        .output()
        .unwrap();
    assert_eq!(unset.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unset.stderr).contains("SYNTH_KEYS is not set"));

    let help = Command::new(bin).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));
}

#[test]
fn ctrl_c_stops_a_real_run_writes_the_reports_and_exits_3() {
    use std::io::{BufRead, BufReader, Read, Write};
    // A tiny blocking HTTP server: answers every request after 2 s, on its own threads.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                std::thread::sleep(std::time::Duration::from_secs(2));
                let mut s = stream;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                let _ = s.read(&mut [0u8; 1]);
            });
        }
    });
    let dir = std::env::temp_dir().join(format!("loadgen-sigint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("s.yaml");
    std::fs::write(
        &scenario,
        format!("target: http://{addr}\nphases: [{{ duration: 60s, arrival_rate: 20 }}]\njourneys: [{{ name: s, steps: [{{ get: / }}] }}]\n"),
    )
    .unwrap();
    let report = dir.join("report.json");
    let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["run", scenario.to_str().unwrap(), "--quiet", "--report-json", report.to_str().unwrap()])
        .env("SYNTH_KEYS", KEYS)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let sent = std::time::Instant::now();
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert!(sent.elapsed() < std::time::Duration::from_secs(2), "took {:?} to stop", sent.elapsed());
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("STOPPED"), "{stdout}");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["ending"], "stopped");
    assert!(json["journeys"]["cancelled"].as_u64().unwrap() > 0, "{json}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A token no service would accept (longer than the verifiers' 24 h default) is refused when
/// minted, saying why; `--allow-long` is the way out for services that accept longer.
#[test]
fn mint_refuses_a_ttl_services_would_refuse() {
    let keys = keys_file("long", KEYS);
    let keys = keys.to_str().unwrap();
    let mint = |extra: &[&str]| {
        let mut args = vec!["loadgen", "token", "mint", "--run", "r1", "--ttl", "48h", "--keys-file", keys];
        args.extend_from_slice(extra);
        run_in_process(&args)
    };
    let (result, out) = mint(&[]);
    let e = result.unwrap_err().to_string();
    assert!(e.contains("24h") && e.contains("--allow-long"), "{e}");
    assert!(out.is_empty(), "no token printed: {out}");
    let (result, token) = mint(&["--allow-long"]);
    assert_eq!(result.unwrap(), Exit::Ok);
    // Refused by a default verifier, accepted by one that allows 48 h.
    assert!(Verifier::new(KeyRing::parse(KEYS).unwrap()).verify(token.trim()).is_err());
    let long =
        Verifier::new(KeyRing::parse(KEYS).unwrap()).with_max_ttl(std::time::Duration::from_secs(49 * 3600));
    assert!(long.verify(token.trim()).is_ok());
    // 24 h exactly is fine.
    let (result, _) =
        run_in_process(&["loadgen", "token", "mint", "--run", "r1", "--ttl", "24h", "--keys-file", keys]);
    assert_eq!(result.unwrap(), Exit::Ok);
}

/// `loadgen init URL FILE` writes a scenario `validate` accepts, says what to run next, and
/// never overwrites a file unless told to.
#[test]
fn init_writes_a_starter_scenario_that_validates() {
    let dir = std::env::temp_dir().join(format!("loadgen-cli-{}-init", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("checkout.yaml");
    let path = file.to_str().unwrap();
    let (result, out) = run_in_process(&["loadgen", "init", "http://127.0.0.1:8080", path]);
    assert_eq!(result.unwrap(), Exit::Ok);
    assert!(
        out.contains("loadgen validate") && out.contains("loadgen preflight") && out.contains("loadgen run"),
        "{out}"
    );
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.contains("target: http://127.0.0.1:8080/") && written.contains("# expect_path"),
        "{written}"
    );
    let (result, out) = run_in_process(&["loadgen", "validate", path]);
    assert_eq!(result.unwrap(), Exit::Ok, "{out}");
    // Not over an existing file...
    std::fs::write(&file, "mine").unwrap();
    let e = run_in_process(&["loadgen", "init", "http://127.0.0.1:8080", path]).0.unwrap_err().to_string();
    assert!(e.contains("exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
    // ...unless asked.
    assert_eq!(
        run_in_process(&["loadgen", "init", "https://shop.example", path, "--force"]).0.unwrap(),
        Exit::Ok
    );
    assert!(std::fs::read_to_string(&file).unwrap().contains("target: https://shop.example/"));
    // A URL that is not one says what to give.
    for bad in ["127.0.0.1:8080", "ftp://x", "not a url"] {
        let e = run_in_process(&["loadgen", "init", bad, path, "--force"]).0.unwrap_err().to_string();
        assert!(e.contains("http://"), "{bad}: {e}");
    }
}

/// A missing `SYNTH_KEYS` in a `main` that returns `Box<dyn Error>` prints what to do, not a
/// bare variant name.
#[test]
fn a_key_error_debugs_as_its_message() {
    let e = KeyRing::parse("").unwrap_err();
    assert_eq!(format!("{e:?}"), e.to_string());
    assert!(format!("{e:?}").contains("loadgen keygen"), "{e:?}");
}

/// `loadgen preflight` tags what it sends with a run id: it says which, and how to purge it,
/// also when it made one up.
#[test]
fn preflight_names_its_run_id_and_the_cleanup_command() {
    // A service on a runtime of its own: the command line builds its own.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
            axum::serve(l, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    let keys = keys_file("preflight-run-id", KEYS);
    let file = keys.with_file_name("s.yaml");
    std::fs::write(
        &file,
        format!("target: http://{addr}\nphases: [{{ duration: 1s, arrival_rate: 1 }}]\njourneys: [{{ name: a, steps: [{{ get: / }}] }}]\n"),
    )
    .unwrap();
    let (file, keys) = (file.to_str().unwrap(), keys.to_str().unwrap());
    let (result, out) = run_in_process(&["loadgen", "preflight", file, "--keys-file", keys]);
    assert_eq!(result.unwrap(), Exit::Ok, "{out}");
    assert!(out.contains("run id run-") && out.contains("(generated; --run-id chooses it)"), "{out}");
    assert!(out.contains("synth-cleanup --database-url URL --tables TABLE[,TABLE] --run run-"), "{out}");
    let (result, out) =
        run_in_process(&["loadgen", "preflight", file, "--keys-file", keys, "--run-id", "pf-7"]);
    assert_eq!(result.unwrap(), Exit::Ok, "{out}");
    assert!(
        out.contains("run id pf-7:") && out.contains("--run pf-7") && !out.contains("generated"),
        "{out}"
    );
}
