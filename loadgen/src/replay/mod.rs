//! Replay's inputs: recorded requests read from synth captures (JSON Lines), HAR 1.2 exports and
//! GoReplay `.gor` files.
//!
//! [`read`](input::read) opens a file, tells its format from its first bytes
//! ([`detect`](input::detect), never from the file name) and gives [`Records`](input::Records): an
//! iterator of [`Recorded`] requests, each either read or a [`BadRecord`](input::BadRecord) with
//! its file and line (or HAR entry index) and what is wrong. A caller with `--skip-bad` counts bad
//! records and goes on (every reader resumes at the next record); without it, it stops at the
//! first one. A file that cannot be opened or is none of the three formats is an
//! [`InputError`](input::InputError) before any record.
//!
//! | format | looks like | streaming | caps ([`ReadOptions`]) |
//! |---|---|---|---|
//! | synth JSON Lines (`docs/capture-format.md`) | `{"v":1,"at_us":…` one object per line | yes, line by line | body 16 MiB; line 16 MiB × 4/3 (base64) + 1 MiB |
//! | HAR 1.2 | one JSON document `{"log":{…,"entries":[…]}}` | no: read whole, so capped at 256 MiB | body 16 MiB |
//! | GoReplay `.gor` | `1 <id> <timestamp_ns> <latency>` line, raw HTTP/1.x request, `\n🐵🙈🙉\n` | yes, record by record | body 16 MiB; record 16 MiB + 1 MiB |
//!
//! What every reader does the same way:
//! - the URI is origin-form ([`http::uri::PathAndQuery`]); the recorded authority (a HAR URL's
//!   host, an HTTP/2 `:authority`, a `Host` header) goes to [`Recorded::host`] as `host[:port]`,
//!   never with a `user:password@`;
//! - pseudo-headers, `Host`, the hop-by-hop headers (`Connection` and those it names,
//!   `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
//!   `Proxy-Authenticate`) and `Content-Length` are removed: the sender frames the body it sends
//!   and speaks to its own target;
//! - bodies are bytes (binary is fine) up to [`ReadOptions::max_body`](input::ReadOptions::max_body);
//!   a larger one is a bad record saying so (a larger line or record is one too, and is skipped
//!   over without being held in memory);
//! - records come in file order with their absolute time ([`Recorded::at`]), which replay timing
//!   takes relative to the file's first record (files can be out of order: a HAR export lists
//!   entries by start, a `.gor` file by when each message completed);
//! - what is not a request to replay is skipped and counted in [`Skipped`](input::Skipped), not
//!   reported as bad: HAR entries the browser served from its cache (`_fromCache`: the server
//!   never saw them) or with a non-HTTP URL (`data:`, `blob:`, `ws:`…), and GoReplay response
//!   payloads (types 2 and 3). A HAR entry without a `url` (or any field HAR 1.2 requires of a
//!   request) is bad, not skipped: the export is broken, not the traffic unusual.
//!
//! Per format: HAR `postData.text` is taken as is, or base64-decoded with `"encoding":"base64"`;
//! without `text`, URL-encoded `params` are re-encoded and a multipart form is refused; a URL's
//! `#fragment` is dropped. A `.gor` request is framed by `Content-Length` or chunked encoding
//! (decoded); both at once, bytes beyond the framing, or a body shorter than declared are refused,
//! and a last record without its separator is reported as truncated.
//!
//! The module is private to the crate until `loadgen replay` lands, so its examples are the unit
//! tests below (a doctest cannot reach a private module); the fuzz target in `loadgen/fuzz` goes
//! through [`crate::__fuzz`].

mod api;
mod gor;
mod har;
pub(crate) mod input;
mod job;
mod jsonl;
pub(crate) mod plan;
pub(crate) mod routes;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

// The readers' API lives in `input`; re-exported here as callers come to use it.
pub(crate) use api::prepare;
pub use api::{DEFAULT_MAX_GAP, Replay, ReplayCap, ReplayError};
pub(crate) use input::{ReadOptions, read_from};
pub use job::ReplaySummary;
pub(crate) use job::{CapSourceSpec, Job, Settings};
pub(crate) use jsonl::to_jsonl;

/// One recorded request, ready to be sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// When the request was recorded (absolute, as the file has it: microseconds for synth
    /// captures, milliseconds or finer for HAR, nanoseconds for GoReplay).
    pub(crate) at: SystemTime,
    /// The method, as recorded.
    pub(crate) method: http::Method,
    /// Path and query, origin-form.
    pub(crate) uri: http::uri::PathAndQuery,
    /// The authority the request was sent to, when the file says (a HAR URL, `:authority`, `Host`).
    pub(crate) host: Option<String>,
    /// The headers, in order, duplicates kept; pseudo, hop-by-hop, `Host` and `Content-Length`
    /// removed.
    pub(crate) headers: http::HeaderMap,
    /// The body; empty when there was none or when it was omitted.
    pub(crate) body: bytes::Bytes,
    /// True when the capture left the body out (over its limit): the body is empty and must not
    /// be sent as if it were the original.
    pub(crate) body_omitted: bool,
    /// What the capture scrubbed (synth format only; empty for HAR and GoReplay).
    pub(crate) scrubbed: Scrubbed,
    /// Where the record is in its file.
    pub(crate) source: Location,
}

/// What a capture removed or redacted before storing a request (names and paths, never values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scrubbed {
    /// Header names removed.
    pub(crate) headers: Vec<http::HeaderName>,
    /// Query parameter names whose values in the URI are `__synth_scrubbed__`.
    pub(crate) query: Vec<String>,
    /// Canonical JSON paths (`$.card`) whose values in the body are `"__synth_scrubbed__"`.
    pub(crate) json: Vec<String>,
}

impl Scrubbed {
    /// True when nothing was scrubbed.
    pub(crate) fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.query.is_empty() && self.json.is_empty()
    }
}

/// Where a record is: its file and its line (synth, GoReplay: the header line) or HAR entry index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    /// The file, as given to [`read`](input::read).
    pub(crate) file: Arc<Path>,
    /// The place in it.
    pub(crate) at: Position,
}

/// A place in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Position {
    /// A line, counted from 1.
    Line(u64),
    /// A HAR `log.entries` index, counted from 0 as in the JSON.
    Entry(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Position::Line(line) => write!(f, "{}:{line}", self.file.display()),
            Position::Entry(index) => write!(f, "{}: log.entries[{index}]", self.file.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::input::{Format, ReadOptions, Skipped, read, read_from};
    use super::*;

    fn fixture(name: &str) -> (Format, Vec<Recorded>, Skipped) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/replay").join(name);
        let mut records = read(&path, &ReadOptions::default()).unwrap();
        let all = records.by_ref().collect::<Result<Vec<_>, _>>().unwrap();
        (records.format(), all, records.skipped())
    }

    fn summary(records: &[Recorded]) -> Vec<String> {
        let first = records[0].at;
        records
            .iter()
            .map(|r| {
                let place = r.source.to_string();
                let place = place.rsplit('/').next().unwrap_or_default().to_owned();
                let offset = r.at.duration_since(first).unwrap_or(Duration::ZERO).as_millis();
                format!("{place} +{offset}ms {} {} host={:?}", r.method, r.uri, r.host)
            })
            .collect()
    }

    #[test]
    fn synth_capture_fixture() {
        let (format, records, skipped) = fixture("capture.jsonl");
        assert_eq!((format, skipped), (Format::SynthJsonl, Skipped::default()));
        assert_eq!(
            summary(&records),
            [
                "capture.jsonl:1 +0ms GET /products/7?q=shoes&email=__synth_scrubbed__ host=Some(\"shop.example\")",
                "capture.jsonl:2 +250ms POST /orders host=None",
                "capture.jsonl:3 +1000ms PUT /images/9 host=None",
                "capture.jsonl:4 +2000ms POST /upload host=None",
            ]
        );
        assert_eq!(records[0].scrubbed.headers, ["authorization", "cookie"]);
        assert_eq!(records[1].body.as_ref(), br#"{"sku":"A-1","qty":2,"card":"__synth_scrubbed__"}"#);
        assert_eq!(records[1].headers.keys().collect::<Vec<_>>(), ["content-type"]);
        assert_eq!(records[1].scrubbed.json, ["$.card"]);
        assert_eq!(records[2].body.as_ref(), [0, 1, 2, 0xff, 0xfe]);
        assert!(records[3].body_omitted && records[3].body.is_empty());
    }

    #[test]
    fn minimal_har_fixture() {
        let (format, records, skipped) = fixture("minimal.har");
        assert_eq!((format, skipped), (Format::Har, Skipped::default()));
        assert_eq!(
            summary(&records),
            [
                "minimal.har: log.entries[0] +0ms GET /products?page=2 host=Some(\"shop.example\")",
                "minimal.har: log.entries[1] +1500ms POST /cart host=Some(\"shop.example:8443\")",
            ]
        );
        assert_eq!(records[1].body.as_ref(), br#"{"sku":"A"}"#);
        assert_eq!(records[1].headers.keys().collect::<Vec<_>>(), ["content-type"]);
        assert!(records.iter().all(|r| r.scrubbed.is_empty()));
    }

    #[test]
    fn exported_har_fixture_with_the_usual_noise() {
        let (format, records, skipped) = fixture("chrome-export.har");
        assert_eq!(format, Format::Har);
        assert_eq!(skipped, Skipped { from_cache: 1, not_http: 2, responses: 0 });
        assert_eq!(
            summary(&records),
            [
                "chrome-export.har: log.entries[0] +0ms GET / host=Some(\"shop.example\")",
                "chrome-export.har: log.entries[3] +300ms GET /api/products/7?ref=home host=Some(\"shop.example\")",
                "chrome-export.har: log.entries[4] +450ms POST /api/events host=Some(\"shop.example\")",
                "chrome-export.har: log.entries[5] +600ms POST /search host=Some(\"shop.example\")",
            ]
        );
        for r in &records {
            assert!(r.headers.keys().all(|name| !name.as_str().starts_with(':')), "{:?}", r.headers);
            assert_eq!(r.headers["user-agent"], "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0");
        }
        assert_eq!(records[2].body.as_ref(), [0x00, 0x9f, 0x92, 0x96, 0xff]);
        assert_eq!(records[3].body.as_ref(), b"q=red+shoes&size=42");
    }

    #[test]
    fn goreplay_fixture() {
        let (format, records, skipped) = fixture("requests.gor");
        assert_eq!(format, Format::Gor);
        assert_eq!(skipped, Skipped { responses: 2, ..Skipped::default() });
        assert_eq!(
            summary(&records),
            [
                "requests.gor:1 +0ms GET /products/7?q=shoes host=Some(\"shop.example\")",
                "requests.gor:15 +500ms POST /orders host=Some(\"shop.example\")",
                "requests.gor:26 +1000ms PUT /images/9 host=Some(\"shop.example\")",
            ]
        );
        assert_eq!(records[0].headers.keys().collect::<Vec<_>>(), ["user-agent", "accept"]);
        assert_eq!(records[1].body.as_ref(), b"{\"sku\":\"A\",\"qty\":2}\n\r\n");
        assert_eq!(records[1].headers.keys().collect::<Vec<_>>(), ["content-type"]);
        assert_eq!(records[2].body.as_ref(), [0, 1, 2, 0xff, 0xfe]);
        assert!(records[2].headers.is_empty());
    }

    /// An endless file: `record` over and over.
    struct Endless {
        record: Vec<u8>,
        at: usize,
    }

    impl std::io::Read for Endless {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let mut n = 0;
            while n < out.len() {
                let take = (self.record.len() - self.at).min(out.len() - n);
                out[n..n + take].copy_from_slice(&self.record[self.at..self.at + take]);
                self.at = (self.at + take) % self.record.len();
                n += take;
            }
            Ok(n)
        }
    }

    #[test]
    fn synth_and_goreplay_files_stream_rather_than_load_whole() {
        // A reader that loaded the file first would never return here.
        let endless =
            |record: &str| std::io::BufReader::new(Endless { record: record.as_bytes().to_vec(), at: 0 });
        let line = r#"{"v":1,"at_us":5,"method":"GET","uri":"/a","headers":[],"body":"","body_encoding":"utf8","body_len":0}"#;
        let records = read_from(
            Arc::from(Path::new("endless.jsonl")),
            endless(&format!("{line}\n")),
            &ReadOptions::default(),
        )
        .unwrap();
        let first: Vec<_> = records.take(1000).map(|r| r.unwrap().source.to_string()).collect();
        assert_eq!(first.last().map(String::as_str), Some("endless.jsonl:1000"));
        let gor = "1 id 5 0\nGET /a HTTP/1.1\r\n\r\n\n🐵🙈🙉\n";
        let records =
            read_from(Arc::from(Path::new("endless.gor")), endless(gor), &ReadOptions::default()).unwrap();
        let first: Vec<_> = records.take(1000).map(|r| r.unwrap().source.to_string()).collect();
        assert_eq!(first.last().map(String::as_str), Some("endless.gor:4996"));
    }

    #[test]
    fn a_10_mb_body_reads_in_every_format_and_one_over_the_cap_is_a_clear_error() {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let synth = |body: &[u8]| {
            format!(
                r#"{{"v":1,"at_us":1,"method":"PUT","uri":"/f","headers":[],"body":"{}","body_encoding":"base64","body_len":{}}}"#,
                b64(body),
                body.len()
            )
            .into_bytes()
        };
        let har = |body: &[u8]| {
            format!(
                r#"{{"log":{{"entries":[{{"startedDateTime":"2026-12-01T10:00:00Z","request":{{"method":"PUT","url":"http://a/f","headers":[],"postData":{{"mimeType":"application/octet-stream","text":"{}","encoding":"base64"}}}}}}]}}}}"#,
                b64(body)
            )
            .into_bytes()
        };
        let gor = |body: &[u8]| {
            let mut file =
                format!("1 id 1 0\nPUT /f HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            file.extend_from_slice(body);
            file.extend_from_slice("\n🐵🙈🙉\n".as_bytes());
            file
        };
        let ten_mb: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
        let over = vec![0xffu8; (16 << 20) + 1];
        for (name, make) in
            [("s.jsonl", &synth as &dyn Fn(&[u8]) -> Vec<u8>), ("h.har", &har), ("g.gor", &gor)]
        {
            let read_one = |body: &[u8]| {
                let file = make(body);
                read_from(Arc::from(Path::new(name)), &file[..], &ReadOptions::default())
                    .unwrap()
                    .next()
                    .unwrap()
            };
            assert_eq!(read_one(&ten_mb).unwrap().body.len(), 10_000_000, "{name}");
            let err = read_one(&over).unwrap_err().to_string();
            assert!(err.starts_with(name) && err.contains("over the limit of 16777216 bytes"), "{err}");
        }
    }

    #[test]
    fn every_fixture_survives_a_write_and_a_read() {
        for name in ["capture.jsonl", "minimal.har", "chrome-export.har", "requests.gor"] {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/replay").join(name);
            let read = crate::__fuzz::read_bytes(&std::fs::read(path).unwrap()).unwrap();
            assert!(!read.records.is_empty());
            for record in read.records {
                let written = record.unwrap();
                assert_eq!(written.back, Ok(written.line), "{}", written.location);
            }
        }
    }

    /// What synth-tower's capture writes, replay reads: the two sides of
    /// `docs/capture-format.md`, over a real socket and a real file.
    #[tokio::test]
    async fn what_synth_tower_captures_replay_reads_back() {
        use axum::{Router, routing::post};
        use synth_tower::capture::{CaptureLayer, JsonLinesSink, Scrub};

        let dir = std::env::temp_dir().join(format!("replay-reads-capture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sink = JsonLinesSink::new(&dir, "t").unwrap();
        let layer = CaptureLayer::builder(sink)
            .share(1.0)
            .per_second(None)
            .methods([http::Method::GET, http::Method::POST])
            .body_limit(1000)
            .scrub(Scrub { query: vec!["email".into()], ..Scrub::default() })
            .build()
            .unwrap();
        let handle = layer.handle();
        let app = Router::new()
            .route("/p", post(|b: bytes::Bytes| async move { b.len().to_string() }).get(|| async { "g" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app.layer(layer)).await });
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>();
        let send = |method: &str, uri: &str, body: Vec<u8>| {
            let req = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}{uri}"))
                .header("authorization", "Bearer secret")
                .header("x-bin", http::HeaderValue::from_bytes(&[0xe9]).unwrap())
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            client.request(req)
        };
        send("GET", "/p?email=a%40b.c&page=2", Vec::new()).await.unwrap();
        send("POST", "/p", vec![0, 159, 146, 150]).await.unwrap();
        send("POST", "/p", vec![b'x'; 5000]).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while handle.snapshot().written < 3 {
            assert!(std::time::Instant::now() < deadline, "{:?}", handle.snapshot());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
        let records: Vec<Recorded> =
            input::read(&file, &ReadOptions::default()).unwrap().map(Result::unwrap).collect();
        assert_eq!(records.len(), 3);
        let get = records.iter().find(|r| r.method == http::Method::GET).unwrap();
        assert_eq!(get.uri.as_str(), "/p?email=__synth_scrubbed__&page=2");
        assert_eq!(get.scrubbed.query, ["email"]);
        assert!(get.scrubbed.headers.iter().any(|h| h == "authorization"));
        assert!(get.headers.get("authorization").is_none());
        assert_eq!(get.headers.get("x-bin").unwrap().as_bytes(), [0xe9]);
        let binary = records.iter().find(|r| r.body.len() == 4).unwrap();
        assert_eq!(binary.body.as_ref(), [0, 159, 146, 150]);
        let long = records.iter().find(|r| r.body_omitted).unwrap();
        assert!(long.body.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
