//! The production-safety part of a scenario: external signals (a Prometheus-compatible query
//! API), the conditions that abort or back off a run, top-up, and what shed answers do.

use std::{collections::BTreeMap, time::Duration};

use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::{ScenarioError, Template, compile::Compiler};

/// Where signals come from and what they decide.
#[derive(Clone, Debug)]
pub struct Signals {
    /// Base URL of a Prometheus-compatible query API (`/api/v1/query` is appended).
    pub prometheus: Uri,
    /// How often every query is asked.
    pub interval: Duration,
    /// How long one poll may take.
    pub timeout: Duration,
    /// Extra request headers (authentication).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What to do when the source stops answering.
    pub on_unavailable: OnUnavailable,
    /// Failed polls in a row that make the source unavailable.
    pub unavailable_after: u32,
    /// How the rate comes back after a back-off.
    pub recover: Recover,
    /// Conditions, checked at every poll.
    pub conditions: Vec<Condition>,
    /// Hold real + synthetic traffic at a target.
    pub top_up: Option<TopUp>,
}

/// What a source that stopped answering does to the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Hold arrivals until it answers again (the default: never ramp blind).
    Pause,
    /// Abort the run.
    Abort,
    /// Go on without it.
    Continue,
}

/// Recovery after a back-off: the factor rises by `step` every `every` while healthy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recover {
    /// How much of the full rate comes back per step.
    pub step: f64,
    /// How often.
    pub every: Duration,
}

/// A named query compared with a bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// Name, for the record.
    pub name: String,
    /// PromQL (or MetricsQL) instant query.
    pub query: String,
    /// The bound that is a breach.
    pub bound: Bound,
    /// How long the breach must last before the action.
    pub window: Duration,
    /// The action.
    pub action: Action,
    /// No series is a healthy reading (`allow_no_data: true`). Off by default: a query that reads
    /// nothing (a misspelt metric, a summary where the query needs a histogram) would silently
    /// switch the condition off, so no data counts like an unanswered poll.
    pub allow_no_data: bool,
}

/// When a value breaches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// Above this (the largest series counts).
    Above(f64),
    /// Below this (the smallest series counts).
    Below(f64),
}

impl Bound {
    /// The value of a poll that matters for this bound (largest or smallest series).
    pub fn pick(&self, values: &[f64]) -> Option<f64> {
        // +Inf is a value (a quantile past the highest bucket: the worst case); NaN is no data.
        let it = values.iter().copied().filter(|v| !v.is_nan());
        match self {
            Bound::Above(_) => it.reduce(f64::max),
            Bound::Below(_) => it.reduce(f64::min),
        }
    }

    /// Whether `value` breaches.
    pub fn breached(&self, value: f64) -> bool {
        match *self {
            Bound::Above(b) => value > b,
            Bound::Below(b) => value < b,
        }
    }
}

/// What a breach does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Stop the run now; it ends as aborted (exit code 3).
    Abort,
    /// Multiply the rate by `factor`, hold at least `hold`, then recover slowly when healthy.
    BackOff {
        /// Multiplier, in (0, 1).
        factor: f64,
        /// Minimum time before recovery starts.
        hold: Duration,
    },
}

/// Top-up: loadgen supplies `target - real` requests/s (smoothed, bounded).
#[derive(Clone, Debug, PartialEq)]
pub struct TopUp {
    /// Query for real traffic, in requests/s.
    pub real_rate: String,
    /// Real + synthetic requests/s to hold.
    pub target: f64,
    /// Synthetic traffic at most this share of real traffic (1.0 = as much as real).
    pub max_share: f64,
    /// Time constant of the smoothing (no oscillation on a step change).
    pub smoothing: Duration,
}

/// What answers that a synth layer shed (`synthetic-traffic-shed: 1`) do to the rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OnShed {
    /// Back off when they appear (default true).
    pub back_off: bool,
    /// Multiplier (default 0.5).
    pub factor: f64,
    /// Minimum time before recovery (default 10 s).
    pub hold: Duration,
}

impl Default for OnShed {
    fn default() -> Self {
        OnShed { back_off: true, factor: 0.5, hold: Duration::from_secs(10) }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignals {
    prometheus: Spanned<String>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    on_unavailable: Option<Spanned<String>>,
    #[serde(default)]
    unavailable_after: Option<Spanned<u32>>,
    #[serde(default)]
    recover: Option<RawRecover>,
    #[serde(default)]
    conditions: Vec<Spanned<RawCondition>>,
    #[serde(default)]
    top_up: Option<Spanned<RawTopUp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecover {
    #[serde(default)]
    step: Option<Spanned<f64>>,
    #[serde(default)]
    every: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    name: String,
    query: String,
    #[serde(default)]
    above: Option<f64>,
    #[serde(default)]
    below: Option<f64>,
    #[serde(default, rename = "for")]
    window: Option<Spanned<String>>,
    action: Spanned<String>,
    #[serde(default)]
    factor: Option<Spanned<f64>>,
    #[serde(default)]
    hold: Option<Spanned<String>>,
    #[serde(default)]
    allow_no_data: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopUp {
    real_rate: String,
    target: Spanned<f64>,
    #[serde(default)]
    max_share: Option<Spanned<f64>>,
    #[serde(default)]
    smoothing: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOnShed {
    #[serde(default)]
    back_off: Option<bool>,
    #[serde(default)]
    factor: Option<Spanned<f64>>,
    #[serde(default)]
    hold: Option<Spanned<String>>,
}

/// Keys, for "did you mean" hints.
pub(super) const KEYS: [&str; 22] = [
    "prometheus",
    "interval",
    "timeout",
    "headers",
    "on_unavailable",
    "unavailable_after",
    "recover",
    "conditions",
    "top_up",
    "step",
    "every",
    "query",
    "above",
    "below",
    "for",
    "action",
    "factor",
    "hold",
    "real_rate",
    "target",
    "max_share",
    "smoothing",
];

impl Compiler<'_> {
    fn factor(&self, f: Option<&Spanned<f64>>, default: f64, what: &str) -> Result<f64, ScenarioError> {
        match f {
            None => Ok(default),
            Some(f) if f.value > 0.0 && f.value < 1.0 => Ok(f.value),
            Some(f) => Err(self.at(
                &f.referenced,
                format!("{what} must be between 0 and 1 (exclusive), got {}", f.value),
                Some("e.g. 0.5 halves the rate".into()),
            )),
        }
    }

    fn duration_or(
        &self,
        d: Option<&Spanned<String>>,
        default: Duration,
        what: &str,
    ) -> Result<Duration, ScenarioError> {
        d.map_or(Ok(default), |d| self.duration(d, what))
    }

    pub(super) fn on_shed(&self, raw: Option<&RawOnShed>) -> Result<OnShed, ScenarioError> {
        let d = OnShed::default();
        let Some(raw) = raw else { return Ok(d) };
        Ok(OnShed {
            back_off: raw.back_off.unwrap_or(true),
            factor: self.factor(raw.factor.as_ref(), d.factor, "on_shed.factor")?,
            hold: self.duration_or(raw.hold.as_ref(), d.hold, "on_shed.hold")?,
        })
    }

    pub(super) fn signals(&self, raw: &RawSignals, at: &Location) -> Result<Signals, ScenarioError> {
        let prometheus: Uri = raw.prometheus.value.parse().map_err(|_| {
            self.at(
                &raw.prometheus.referenced,
                format!("`{}` is not a URL", raw.prometheus.value),
                Some("the base URL of the query API, e.g. `prometheus: http://127.0.0.1:9090`".into()),
            )
        })?;
        if !matches!(prometheus.scheme_str(), Some("http" | "https")) || prometheus.authority().is_none() {
            return Err(self.at(
                &raw.prometheus.referenced,
                "signals.prometheus must be an http:// or https:// URL with a host",
                Some("e.g. `prometheus: http://127.0.0.1:9090`".into()),
            ));
        }
        let interval = self.duration_or(raw.interval.as_ref(), Duration::from_secs(5), "signals.interval")?;
        if interval < Duration::from_millis(100) {
            return Err(self.at(at, "signals.interval must be at least 100ms", None));
        }
        let timeout = self.duration_or(raw.timeout.as_ref(), Duration::from_secs(2), "signals.timeout")?;
        let mut headers = Vec::new();
        for (k, v) in &raw.headers {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|_| self.at(&v.referenced, format!("`{k}` is not a header name"), None))?;
            struct NoVars;
            impl super::template::Scope for NoVars {
                fn resolve(&self, _: &str) -> Option<super::template::Var> {
                    None
                }
                fn names(&self) -> Vec<String> {
                    Vec::new()
                }
            }
            let t = Template::compile(&v.value, &NoVars)
                .map_err(|e| self.at(&v.referenced, e.message, e.hint))?;
            let text = t
                .as_text()
                .ok_or_else(|| self.at(&v.referenced, "signal headers may only use env('NAME')", None))?;
            let value = HeaderValue::from_str(&text).map_err(|_| {
                self.at(&v.referenced, format!("the value of `{k}` is not a valid header value"), None)
            })?;
            headers.push((name, value));
        }
        let on_unavailable = match raw.on_unavailable.as_ref().map(|s| (s.value.as_str(), s)) {
            None | Some(("pause", _)) => OnUnavailable::Pause,
            Some(("abort", _)) => OnUnavailable::Abort,
            Some(("continue", _)) => OnUnavailable::Continue,
            Some((other, s)) => {
                return Err(self.at(
                    &s.referenced,
                    format!("on_unavailable: `{other}` is not an action"),
                    Some("use pause (the default), abort or continue".into()),
                ));
            }
        };
        let unavailable_after = match &raw.unavailable_after {
            Some(n) if n.value == 0 => {
                return Err(self.at(&n.referenced, "unavailable_after must be 1 or more", None));
            }
            Some(n) => n.value,
            None => 2,
        };
        let recover = Recover {
            step: match raw.recover.as_ref().and_then(|r| r.step.as_ref()) {
                Some(s) if s.value > 0.0 && s.value <= 1.0 => s.value,
                Some(s) => return Err(self.at(&s.referenced, "recover.step must be in (0, 1]", None)),
                None => 0.1,
            },
            every: self.duration_or(
                raw.recover.as_ref().and_then(|r| r.every.as_ref()),
                Duration::from_secs(10),
                "recover.every",
            )?,
        };
        let mut conditions = Vec::new();
        for c in &raw.conditions {
            let loc = &c.referenced;
            let c = &c.value;
            let bound = match (c.above, c.below) {
                (Some(a), None) => Bound::Above(a),
                (None, Some(b)) => Bound::Below(b),
                _ => {
                    return Err(self.at(
                        loc,
                        format!("condition `{}` needs one bound: `above: N` or `below: N`", c.name),
                        None,
                    ));
                }
            };
            let window = self.duration_or(c.window.as_ref(), Duration::ZERO, "for")?;
            let action = match c.action.value.as_str() {
                "abort" => Action::Abort,
                "back_off" => Action::BackOff {
                    factor: self.factor(c.factor.as_ref(), 0.5, "factor")?,
                    hold: self.duration_or(c.hold.as_ref(), window.max(Duration::from_secs(10)), "hold")?,
                },
                other => {
                    return Err(self.at(
                        &c.action.referenced,
                        format!("action `{other}` is not known"),
                        Some("use abort or back_off".into()),
                    ));
                }
            };
            if c.query.trim().is_empty() {
                return Err(self.at(loc, format!("condition `{}` has an empty query", c.name), None));
            }
            conditions.push(Condition {
                name: c.name.clone(),
                query: c.query.clone(),
                bound,
                window,
                action,
                allow_no_data: c.allow_no_data,
            });
        }
        let top_up = match &raw.top_up {
            None => None,
            Some(t) => {
                let loc = &t.referenced;
                let t = &t.value;
                if !(t.target.value.is_finite() && t.target.value > 0.0) {
                    return Err(self.at(
                        &t.target.referenced,
                        "top_up.target must be above 0 (requests/s)",
                        None,
                    ));
                }
                let max_share = match &t.max_share {
                    Some(s) if s.value > 0.0 && s.value.is_finite() => s.value,
                    Some(s) => return Err(self.at(&s.referenced, "top_up.max_share must be above 0", None)),
                    None => 1.0,
                };
                if t.real_rate.trim().is_empty() {
                    return Err(self.at(loc, "top_up.real_rate needs a query", None));
                }
                Some(TopUp {
                    real_rate: t.real_rate.clone(),
                    target: t.target.value,
                    max_share,
                    smoothing: self.duration_or(
                        t.smoothing.as_ref(),
                        Duration::from_secs(10),
                        "top_up.smoothing",
                    )?,
                })
            }
        };
        if conditions.is_empty() && top_up.is_none() {
            return Err(self.at(
                at,
                "signals without conditions or top_up do nothing",
                Some("add `conditions:` (abort / back_off) or `top_up:`".into()),
            ));
        }
        Ok(Signals {
            prometheus,
            interval,
            timeout,
            headers,
            on_unavailable,
            unavailable_after,
            recover,
            conditions,
            top_up,
        })
    }
}
