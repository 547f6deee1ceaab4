//! Watching the services' own `/metrics` pages during a preflight (`--observe URL`): which
//! guards a journey engaged **after** its response, such as an e-mail sent from a spawned task,
//! which no `synthetic-traffic-guards` header can report.
//!
//! Before each journey the pages are read; after it, and a settle time for deferred effects,
//! they are read again: a guard whose `synth_guard_suppressed_total` moved was engaged by that
//! journey (preflight runs journeys one at a time). Before the first journey the pages are read
//! twice, a settle time apart: counters that move with no journey in flight (another synthetic
//! run) are reported, and then nothing is attributed. A rise proves as many requests as it
//! counts: [`Observer::rises`] gives it per guard, and the preflight fails the steps of a journey
//! that expect a guard after the response when it rose less than they are many. Pages are read
//! up to [`MAX_READ_BODY`] (4 MiB).

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use http_body_util::Full;

use crate::engine::{Bounded, HttpClient, MAX_READ_BODY};

/// The family a guard's suppressions are counted in (synth-guards' `GuardRegistry`).
pub(crate) const SUPPRESSED_FAMILY: &str = "synth_guard_suppressed_total";

/// The default time to wait for effects that come after a journey's last response.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);

/// Sums of `synth_guard_suppressed_total` by `guard` label in a Prometheus text page (other
/// labels, such as `synthetic` added by a recorder, are summed over).
pub(crate) fn suppressed_counts(page: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(SUPPRESSED_FAMILY) else { continue };
        let Some(rest) = rest.strip_prefix('{') else { continue };
        let Some((labels, value)) = split_labels(rest) else { continue };
        let Some(guard) = label(labels, "guard") else { continue };
        // The value, then an optional timestamp.
        let Some(value) = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if value.is_finite() {
            *out.entry(guard).or_insert(0.0) += value;
        }
    }
    out
}

/// Splits `a="x",b="y"} 3` into the label text and what follows the closing brace, honouring
/// escapes inside quoted values.
fn split_labels(s: &str) -> Option<(&str, &str)> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// The unescaped value of label `name`.
fn label(labels: &str, name: &str) -> Option<String> {
    let mut rest = labels;
    while !rest.is_empty() {
        let rest_trimmed = rest.trim_start_matches([',', ' ']);
        let (key, after) = rest_trimmed.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return None,
                },
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        if key.trim() == name {
            return Some(value);
        }
        rest = &after[end..];
    }
    None
}

/// What could not be read.
#[derive(Debug, thiserror::Error)]
#[error("--observe {url}: {why}")]
pub(crate) struct ObserveError {
    url: String,
    why: String,
}

/// Reads the services' pages given with `--observe`.
#[derive(Debug)]
pub(crate) struct Observer {
    urls: Vec<String>,
    settle: Duration,
    client: HttpClient,
}

/// Suppression counts of every observed page, by (page, guard).
pub(crate) type Counts = BTreeMap<(usize, String), f64>;

impl Observer {
    /// Watches `urls` (each a `/metrics` page), waiting `settle` after each journey.
    pub(crate) fn new(urls: Vec<String>, settle: Duration, tls: &crate::scenario::Tls) -> Self {
        let timeout = Duration::from_secs(5);
        Observer { urls, settle, client: HttpClient::new(timeout, timeout, 4, false, tls) }
    }

    /// The settle time.
    pub(crate) fn settle(&self) -> Duration {
        self.settle
    }

    /// Reads every page now.
    pub(crate) async fn counts(&self) -> Result<Counts, ObserveError> {
        let mut out = Counts::new();
        for (i, url) in self.urls.iter().enumerate() {
            let err = |why: String| ObserveError { url: url.clone(), why };
            let req = http::Request::get(url.as_str())
                .body(Full::new(Bytes::new()))
                .map_err(|e| err(format!("not a URL: {e}")))?;
            let res = self.client.send_bounded(req, MAX_READ_BODY).await.map_err(|e| match e {
                Bounded::TooLarge(_) => err(e.to_string()),
                _ => err(format!("no answer ({e})")),
            })?;
            if !res.status().is_success() {
                return Err(err(format!("answered {}", res.status())));
            }
            let page = std::str::from_utf8(res.body()).map_err(|_| err("the page is not UTF-8".into()))?;
            let counts = suppressed_counts(page);
            if counts.is_empty() && !page.contains(SUPPRESSED_FAMILY) {
                return Err(err(format!(
                    "no {SUPPRESSED_FAMILY} on the page: serve the guards' counters there \
                     (GuardRegistry::render_prometheus)"
                )));
            }
            out.extend(counts.into_iter().map(|(guard, n)| ((i, guard), n)));
        }
        Ok(out)
    }

    /// How much each guard's suppressions rose from `before` to `after`, summed over the pages
    /// (only guards that rose).
    pub(crate) fn rises(&self, before: &Counts, after: &Counts) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for ((page, guard), n) in after {
            let was = before.get(&(*page, guard.clone())).copied().unwrap_or(0.0);
            if *n > was {
                *out.entry(guard.clone()).or_insert(0.0) += n - was;
            }
        }
        out
    }

    /// The guards whose suppressions rose from `before` to `after`, with the page they rose
    /// on: `guard (+n at URL)`.
    pub(crate) fn moved(&self, before: &Counts, after: &Counts) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = after
            .iter()
            .filter_map(|((page, guard), n)| {
                let was = before.get(&(*page, guard.clone())).copied().unwrap_or(0.0);
                (*n > was).then(|| (guard.clone(), format!("+{} at {}", n - was, self.urls[*page])))
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_sums_other_labels() {
        let page = concat!(
            "# HELP synth_guard_suppressed_total x\n",
            "synth_guard_suppressed_total{guard=\"email\",synthetic=\"true\"} 2\n",
            "synth_guard_suppressed_total{synthetic=\"false\",guard=\"email\"} 1 1700000000000\n",
            "synth_guard_suppressed_total{guard=\"a\\\"b\\\\c}\"} 4\n",
            "synth_guard_suppressed_totalx{guard=\"no\"} 9\n",
            "synth_guard_suppressed_total{guard=\"nan\"} NaN\n",
            "synth_guard_suppressed_total{guard=\"broken\" 3\n",
            "synth_guard_executed_total{guard=\"email\"} 7\n",
        );
        let c = suppressed_counts(page);
        assert_eq!(c.get("email"), Some(&3.0));
        assert_eq!(c.get("a\"b\\c}"), Some(&4.0));
        assert_eq!(c.len(), 2, "{c:?}");
    }
}
