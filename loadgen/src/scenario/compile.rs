//! The compiler from the YAML form ([`raw`](super::raw)) to the model: every template, JSON path,
//! regex, threshold and data file checked once, every mistake a [`ScenarioError`] at its file,
//! line and column with a hint on how to fix it.

use std::{fmt, path::Path, sync::Arc, time::Duration};

use http::{HeaderName, Method, Uri};
use serde_saphyr::{Location, Spanned};
use synth_ctx::RunId;

use super::{
    Body, Capture, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RATE_FACTOR, Expect, Feeder, GrpcCall, Journey,
    JsonPath, JsonTemplate, MAX_ARRIVAL_RATE, MAX_RATE_FACTOR_LIMIT, Phase, Request, Scenario, Step,
    Template, Threshold, Timeouts, Tls, csv,
    model::fix_uris,
    raw::{
        RawCapture, RawExpect, RawGrpc, RawGrpcStatus, RawJourney, RawPhase, RawScenario, RawStatus, RawStep,
        RawThreshold, RawTls,
    },
    template::{self, Scope, Var},
    walk,
};

/// A scenario file that does not load, with where and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioError {
    /// The file.
    pub file: String,
    /// 1-based line, 0 if unknown.
    pub line: u64,
    /// 1-based column, 0 if unknown.
    pub column: u64,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)?;
        } else {
            write!(f, "{}: {}", self.file, self.message)?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Compiles one scenario file's YAML form; its methods for `signals:` live in
/// [`signals`](super::signals).
pub(super) struct Compiler<'a> {
    /// The file, as errors name it.
    pub(super) file: &'a str,
    /// Where data and certificate files are read from.
    pub(super) dir: &'a Path,
    /// The `.proto` files of gRPC steps compiled so far, by path and include directories:
    /// each is compiled once per scenario, however many steps use it.
    pub(super) protos: std::cell::RefCell<ProtoCache>,
}

/// Compiled `.proto` files: (canonical file, include directories) to their descriptors.
pub(super) type ProtoCache =
    std::collections::HashMap<(std::path::PathBuf, Vec<std::path::PathBuf>), prost_reflect::DescriptorPool>;

/// Variables a journey's templates can see at a given step.
struct JourneyScope<'a> {
    feeders: &'a [Feeder],
    captures: &'a [String],
    used: std::cell::RefCell<Vec<usize>>,
}

impl Scope for JourneyScope<'_> {
    fn resolve(&self, name: &str) -> Option<Var> {
        if name == "run" {
            return Some(Var::Run);
        }
        if let Some(slot) = self.captures.iter().position(|c| c == name) {
            return Some(Var::Capture(slot));
        }
        let (feeder, column) = name.split_once('.')?;
        let f = self.feeders.iter().position(|f| f.name == feeder)?;
        let c = self.feeders[f].columns.iter().position(|c| c == column)?;
        let mut used = self.used.borrow_mut();
        if !used.contains(&f) {
            used.push(f);
        }
        Some(Var::Data(f, c))
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.captures.to_vec();
        for f in self.feeders {
            names.extend(f.columns.iter().map(|c| format!("{}.{c}", f.name)));
        }
        names.push("run".into());
        names
    }
}

impl Compiler<'_> {
    pub(super) fn at(
        &self,
        loc: &Location,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ScenarioError {
        ScenarioError {
            file: self.file.to_owned(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
            hint,
        }
    }

    /// Service or guard names for preflight expectations.
    fn names(&self, names: &[Spanned<String>], what: &str) -> Result<Vec<String>, ScenarioError> {
        names
            .iter()
            .map(|n| {
                if synth_ctx::trail::is_valid_name(&n.value) {
                    Ok(n.value.clone())
                } else {
                    Err(self.at(
                        &n.referenced,
                        format!("{what}: `{}` is not a service or guard name", n.value),
                        Some("names are letters, digits, `.`, `_`, `-`, e.g. `payment.charge`".into()),
                    ))
                }
            })
            .collect()
    }

    pub(super) fn duration(&self, s: &Spanned<String>, what: &str) -> Result<Duration, ScenarioError> {
        crate::duration::parse(&s.value).map_err(|e| {
            self.at(
                &s.referenced,
                format!("{what}: {e}"),
                Some("write a number and a unit: 500ms, 30s, 10m, 1h".into()),
            )
        })
    }

    pub(super) fn compile(&self, raw: RawScenario) -> Result<Scenario, ScenarioError> {
        let target: Uri = raw.target.value.parse().map_err(|_| {
            self.at(
                &raw.target.referenced,
                format!("`{}` is not a URL", raw.target.value),
                Some("e.g. `target: http://127.0.0.1:8080`".into()),
            )
        })?;
        if target.scheme_str().is_none_or(|s| s != "http" && s != "https") || target.authority().is_none() {
            return Err(self.at(
                &raw.target.referenced,
                "the target must be an http:// or https:// URL with a host",
                Some("e.g. `target: http://127.0.0.1:8080`".into()),
            ));
        }
        let run = match &raw.run {
            Some(r) => Some(RunId::new(&r.value).map_err(|e| self.at(&r.referenced, e.to_string(), None))?),
            None => None,
        };
        let timeouts = Timeouts {
            connect: match raw.timeouts.as_ref().and_then(|t| t.connect.as_ref()) {
                Some(d) => self.duration(d, "timeouts.connect")?,
                None => Duration::from_secs(5),
            },
            request: match raw.timeouts.as_ref().and_then(|t| t.request.as_ref()) {
                Some(d) => self.duration(d, "timeouts.request")?,
                None => Duration::from_secs(30),
            },
        };

        let tls = self.tls(raw.tls.as_ref())?;
        let signals = match &raw.signals {
            Some(s) => Some(self.signals(&s.value, &s.referenced)?),
            None => None,
        };
        let on_shed = self.on_shed(raw.on_shed.as_ref())?;
        let max_connections = match &raw.max_connections {
            Some(m) if m.value == 0 => {
                return Err(self.at(
                    &m.referenced,
                    "max_connections: 0 would send nothing",
                    Some("use 1 or more".into()),
                ));
            }
            Some(m) => m.value,
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let max_rate_factor = match &raw.max_rate_factor {
            Some(m) if !(1.0..=MAX_RATE_FACTOR_LIMIT).contains(&m.value) => {
                return Err(self.at(
                    &m.referenced,
                    format!("max_rate_factor: {:?} is out of range", m.value),
                    Some(format!(
                        "a number from 1 to {MAX_RATE_FACTOR_LIMIT}: how far `POST /rate?factor=` may push the written rates (default {DEFAULT_MAX_RATE_FACTOR})"
                    )),
                ));
            }
            Some(m) => m.value,
            None => DEFAULT_MAX_RATE_FACTOR,
        };
        if raw.phases.value.is_empty() {
            return Err(self.at(
                &raw.phases.referenced,
                "no phases",
                Some("add one, e.g. `- { duration: 30s, arrival_rate: 10 }`".into()),
            ));
        }
        let mut phases = Vec::new();
        for p in &raw.phases.value {
            phases.push(self.phase(p, &raw.phases.referenced)?);
        }

        let mut feeders = Vec::new();
        for (name, f) in &raw.data {
            let path = self.dir.join(&f.value.csv.value);
            let (columns, rows) = csv::read(&path).map_err(|e| {
                self.at(
                    &f.value.csv.referenced,
                    format!("data `{name}`: {e}"),
                    Some(format!("the path is relative to the scenario file: {}", self.dir.display())),
                )
            })?;
            if rows.is_empty() {
                return Err(self.at(
                    &f.value.csv.referenced,
                    format!("data `{name}`: {} has no rows", path.display()),
                    None,
                ));
            }
            feeders.push(Feeder { name: name.clone(), columns, rows: rows.into(), order: f.value.order });
        }

        if raw.journeys.value.is_empty() {
            return Err(self.at(
                &raw.journeys.referenced,
                "no journeys",
                Some("add at least one journey with steps".into()),
            ));
        }
        let mut step_names = Vec::new();
        let mut journeys = Vec::new();
        for j in &raw.journeys.value {
            journeys.push(self.journey(j, &feeders, &mut step_names)?);
        }

        let mut thresholds = Vec::new();
        for t in &raw.thresholds {
            let (text, step, abort) = match &t.value {
                RawThreshold::Text(s) => (s.as_str(), None, false),
                RawThreshold::Full(f) => (f.threshold.as_str(), f.step.clone(), f.abort_on_fail),
            };
            let mut th = Threshold::parse(text).map_err(|e| {
                self.at(
                    &t.referenced,
                    e.to_string(),
                    Some("e.g. `p95 < 300ms`, `error_rate < 1%`, `mean <= 50ms`".into()),
                )
            })?;
            if let Some(step) = &step
                && !step_names.iter().any(|n| &**n == step)
            {
                let names: Vec<&str> = step_names.iter().map(|n| &**n).collect();
                let hint = template::suggest(step, &names).map(|s| format!("did you mean `{s}`?"));
                return Err(self.at(
                    &t.referenced,
                    format!("threshold on unknown step `{step}`"),
                    hint.or(Some(format!("steps: {}", names.join(", ")))),
                ));
            }
            th.step = step;
            th.abort_on_fail = abort;
            thresholds.push(th);
        }
        for j in &mut journeys {
            fix_uris(&mut j.steps, &target);
        }
        Ok(Scenario {
            target,
            run,
            phases,
            feeders,
            journeys,
            thresholds,
            step_names,
            timeouts,
            max_connections,
            http2: raw.http2,
            tls,
            signals,
            on_shed,
            max_rate_factor,
        })
    }

    fn tls(&self, raw: Option<&RawTls>) -> Result<Tls, ScenarioError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let Some(ca) = raw.and_then(|t| t.ca.as_ref()) else { return Ok(Tls::default()) };
        let path = self.dir.join(&ca.value);
        let hint = Some("give a PEM file with one or more certificates, e.g. `tls: { ca: ca.pem }`".into());
        let certs =
            CertificateDer::pem_file_iter(&path).and_then(Iterator::collect::<Result<Vec<_>, _>>).map_err(
                |e| self.at(&ca.referenced, format!("tls.ca `{}`: {e}", path.display()), hint.clone()),
            )?;
        if certs.is_empty() {
            return Err(self.at(
                &ca.referenced,
                format!("tls.ca `{}` holds no certificate", path.display()),
                hint,
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                self.at(
                    &ca.referenced,
                    format!("tls.ca `{}`: certificate {}: {e}", path.display(), i + 1),
                    None,
                )
            })?;
        }
        Ok(Tls { extra_roots: certs })
    }

    fn phase(&self, p: &RawPhase, list: &Location) -> Result<Phase, ScenarioError> {
        if let Some(pause) = &p.pause {
            if p.duration.is_some() || p.arrival_rate.is_some() || p.ramp_to.is_some() {
                return Err(self.at(
                    &pause.referenced,
                    "a pause phase has only `pause`",
                    Some("split it: `- { pause: 5s }` then a load phase".into()),
                ));
            }
            return Ok(Phase::Pause { duration: self.duration(pause, "pause")? });
        }
        let Some(d) = &p.duration else {
            return Err(self.at(
                list,
                "a phase needs `duration` and `arrival_rate` (or is `- { pause: 5s }`)",
                None,
            ));
        };
        let duration = self.duration(d, "duration")?;
        if duration.is_zero() {
            return Err(self.at(
                &d.referenced,
                "a phase of 0s does nothing",
                Some("give it a duration, e.g. 30s".into()),
            ));
        }
        if let Some(users) = &p.users {
            if p.arrival_rate.is_some() || p.ramp_to.is_some() || p.max_concurrent.is_some() {
                return Err(self.at(
                    &users.referenced,
                    "a phase is open (`arrival_rate`) or closed (`users`), not both",
                    Some("split it into two phases".into()),
                ));
            }
            if users.value == 0 {
                return Err(self.at(
                    &users.referenced,
                    "a closed phase of 0 users does nothing",
                    Some("use users: 1 or more, or `- { pause: … }`".into()),
                ));
            }
            return Ok(Phase::Closed { duration, users: users.value });
        }
        let Some(rate) = &p.arrival_rate else {
            return Err(self.at(
                &d.referenced,
                "the phase has no `arrival_rate` (open model) or `users` (closed model)",
                Some(
                    "add journeys per second, e.g. `arrival_rate: 10`, or looping users, e.g. `users: 50`"
                        .into(),
                ),
            ));
        };
        let ramp_to = p.ramp_to.as_ref().map_or(rate.value, |r| r.value);
        for (v, loc) in [
            (rate.value, &rate.referenced),
            (ramp_to, p.ramp_to.as_ref().map_or(&rate.referenced, |r| &r.referenced)),
        ] {
            if !(0.0..=MAX_ARRIVAL_RATE).contains(&v) {
                return Err(self.at(
                    loc,
                    format!("{v:?} is not a rate"),
                    Some(format!("journeys per second: a number from 0 to {MAX_ARRIVAL_RATE}")),
                ));
            }
        }
        Ok(Phase::Load { duration, rate: rate.value, ramp_to, max_concurrent: p.max_concurrent })
    }

    fn journey(
        &self,
        j: &Spanned<RawJourney>,
        feeders: &[Feeder],
        step_names: &mut Vec<Arc<str>>,
    ) -> Result<Journey, ScenarioError> {
        let raw = &j.value;
        let name: Arc<str> = Arc::from(raw.name.value.as_str());
        if raw.weight.value == 0 {
            return Err(self.at(
                &raw.weight.referenced,
                format!("journey `{name}` has weight 0, so it would never run"),
                Some("give it a weight of 1 or more, or remove it".into()),
            ));
        }
        if raw.steps.value.is_empty() {
            return Err(self.at(
                &raw.steps.referenced,
                format!("journey `{name}` has no steps"),
                Some("add at least one request".into()),
            ));
        }
        let mut captures = Vec::new();
        let scope_used = std::cell::RefCell::new(Vec::new());
        let steps = self.steps(&raw.steps.value, &name, feeders, &mut captures, &scope_used, step_names)?;
        if !has_request(&steps) {
            return Err(self.at(
                &raw.steps.referenced,
                format!("journey `{name}` makes no request"),
                Some("add a `get:` or `post:` step".into()),
            ));
        }
        Ok(Journey {
            name,
            weight: raw.weight.value,
            steps,
            captures,
            cookies: raw.cookies,
            feeders_used: scope_used.into_inner(),
            code: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn steps(
        &self,
        raw: &[Spanned<RawStep>],
        journey: &str,
        feeders: &[Feeder],
        captures: &mut Vec<String>,
        used: &std::cell::RefCell<Vec<usize>>,
        step_names: &mut Vec<Arc<str>>,
    ) -> Result<Vec<Step>, ScenarioError> {
        let mut out = Vec::new();
        for s in raw {
            let loc = &s.referenced;
            let r = &s.value;
            // Before `think` and `loop`: a gRPC step that also has one is an error, not one of them.
            if let Some(g) = &r.grpc {
                out.push(self.grpc_step(s, g, journey, feeders, captures, used, step_names)?);
                continue;
            }
            if let Some(think) = &r.think {
                out.push(Step::Think(self.duration(think, "think")?));
                continue;
            }
            if let Some(l) = &r.repeat {
                if l.value.count == 0 {
                    return Err(self.at(
                        &l.referenced,
                        "a loop of 0 times",
                        Some("use count: 1 or more, or remove the loop".into()),
                    ));
                }
                let inner = self.steps(&l.value.steps, journey, feeders, captures, used, step_names)?;
                out.push(Step::Loop { count: l.value.count, steps: inner });
                continue;
            }
            let methods = [
                (Method::GET, &r.get),
                (Method::POST, &r.post),
                (Method::PUT, &r.put),
                (Method::PATCH, &r.patch),
                (Method::DELETE, &r.delete),
                (Method::HEAD, &r.head),
            ];
            let given: Vec<(Method, &Spanned<String>)> =
                methods.iter().filter_map(|(m, u)| u.as_ref().map(|u| (m.clone(), u))).collect();
            let (method, url) = match given.as_slice() {
                [(m, u)] => (m.clone(), *u),
                [] => {
                    return Err(self.at(
                        loc,
                        "a step needs a request (`get: /path`, `post: …`), a `think:` or a `loop:`",
                        None,
                    ));
                }
                _ => {
                    return Err(self.at(
                        loc,
                        "a step makes one request: give only one of get, post, put, patch, delete, head",
                        Some("split it into two steps".into()),
                    ));
                }
            };
            let scope = JourneyScope { feeders, captures, used: std::cell::RefCell::new(Vec::new()) };
            let tpl = |text: &str, at: &Location| {
                Template::compile(text, &scope).map_err(|e| self.at(at, e.message, e.hint))
            };
            let url_t = tpl(&url.value, &url.referenced)?;
            let mut headers = Vec::new();
            for (k, v) in &r.headers {
                let name = HeaderName::try_from(k.as_str())
                    .map_err(|_| self.at(&v.referenced, format!("`{k}` is not a header name"), None))?;
                headers.push((name, tpl(&v.value, &v.referenced)?));
            }
            let body = match (&r.json, &r.body) {
                (Some(_), Some(b)) => {
                    return Err(self.at(&b.referenced, "give `json` or `body`, not both", None));
                }
                (Some(j), None) => Body::Json(self.json(&j.value, &j.referenced, &scope)?),
                (None, Some(b)) => Body::Text(tpl(&b.value, &b.referenced)?),
                (None, None) => Body::Empty,
            };
            let expect = match &r.expect {
                Some(e) => self.expect(e)?,
                None => Expect::default(),
            };
            merge_used(used, scope.used.into_inner());
            // Captures become visible to later steps only.
            let caps = self.captures(&r.capture, captures)?;
            let step_name = r.name.clone().unwrap_or_else(|| format!("{journey}: {method} {}", url.value));
            let stat = stat_of(step_names, &step_name);
            out.push(Step::Request(Box::new(Request {
                stat,
                method,
                url: url_t,
                fixed_uri: None,
                headers,
                body,
                captures: caps,
                expect,
                expect_path: self.names(&r.expect_path, "expect_path")?,
                expect_guards: self.names(&r.expect_guards, "expect_guards")?,
            })));
        }
        Ok(out)
    }

    fn json(
        &self,
        v: &serde_json::Value,
        at: &Location,
        scope: &JourneyScope<'_>,
    ) -> Result<JsonTemplate, ScenarioError> {
        Ok(match v {
            serde_json::Value::String(s) => {
                let t = Template::compile(s, scope).map_err(|e| self.at(at, e.message, e.hint))?;
                match t.as_literal() {
                    Some(_) => JsonTemplate::Fixed(v.clone()),
                    None => JsonTemplate::String(t),
                }
            }
            serde_json::Value::Array(a) => {
                JsonTemplate::Array(a.iter().map(|x| self.json(x, at, scope)).collect::<Result<_, _>>()?)
            }
            serde_json::Value::Object(o) => JsonTemplate::Object(
                o.iter()
                    .map(|(k, x)| Ok((k.clone(), self.json(x, at, scope)?)))
                    .collect::<Result<_, ScenarioError>>()?,
            ),
            other => JsonTemplate::Fixed(other.clone()),
        })
    }

    /// A step's captures, each in its journey's slot of that name (a new one the first time).
    fn captures(
        &self,
        raw: &std::collections::BTreeMap<String, Spanned<RawCapture>>,
        captures: &mut Vec<String>,
    ) -> Result<Vec<(usize, Capture)>, ScenarioError> {
        let mut caps = Vec::with_capacity(raw.len());
        for (name, c) in raw {
            let cap = self.capture(name, c)?;
            let slot = match captures.iter().position(|n| n == name) {
                Some(slot) => slot,
                None => {
                    captures.push(name.clone());
                    captures.len() - 1
                }
            };
            caps.push((slot, cap));
        }
        Ok(caps)
    }

    fn capture(&self, name: &str, c: &Spanned<RawCapture>) -> Result<Capture, ScenarioError> {
        if !name
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            || name.contains('.')
        {
            return Err(self.at(
                &c.referenced,
                format!("`{name}` cannot be a variable name"),
                Some("use letters, digits and `_`".into()),
            ));
        }
        let r = &c.value;
        match (&r.json, &r.header, &r.regex) {
            (Some(p), None, None) => Ok(Capture::Json(JsonPath::parse(p).map_err(|e| {
                self.at(
                    &c.referenced,
                    format!("capture `{name}`: {e}"),
                    Some("e.g. `$.token` or `$.items[0].id`".into()),
                )
            })?)),
            (None, Some(h), None) => Ok(Capture::Header(HeaderName::try_from(h.as_str()).map_err(|_| {
                self.at(&c.referenced, format!("capture `{name}`: `{h}` is not a header name"), None)
            })?)),
            (None, None, Some(re)) => {
                Ok(Capture::Regex(regex_lite::Regex::new(re).map_err(|e| {
                    self.at(&c.referenced, format!("capture `{name}`: bad regex: {e}"), None)
                })?))
            }
            _ => Err(self.at(
                &c.referenced,
                format!("capture `{name}` needs exactly one of json, header, regex"),
                Some("e.g. `token: { json: \"$.token\" }`".into()),
            )),
        }
    }

    fn expect(&self, e: &RawExpect) -> Result<Expect, ScenarioError> {
        if let Some(g) = &e.grpc_status {
            return Err(self.at(
                &g.referenced,
                "expect.grpc_status is for gRPC steps",
                Some("an HTTP step expects `status: 200` (or a list of codes)".into()),
            ));
        }
        let status = match &e.status {
            None => None,
            Some(s) => {
                let codes = match &s.value {
                    RawStatus::One(c) => vec![*c],
                    RawStatus::Many(c) => c.clone(),
                };
                if codes.iter().any(|c| !(100..=599).contains(c)) || codes.is_empty() {
                    return Err(self.at(&s.referenced, "expect.status: status codes are 100 to 599", None));
                }
                Some(codes)
            }
        };
        let mut headers = Vec::new();
        for (k, v) in &e.header {
            headers.push((
                HeaderName::try_from(k.as_str()).map_err(|_| ScenarioError {
                    file: self.file.to_owned(),
                    line: 0,
                    column: 0,
                    message: format!("expect.header: `{k}` is not a header name"),
                    hint: None,
                })?,
                v.clone(),
            ));
        }
        let mut json = Vec::new();
        for (p, v) in &e.json {
            json.push((
                JsonPath::parse(p).map_err(|m| ScenarioError {
                    file: self.file.to_owned(),
                    line: 0,
                    column: 0,
                    message: format!("expect.json: {m}"),
                    hint: Some("e.g. `$.status: ok`".into()),
                })?,
                v.clone(),
            ));
        }
        Ok(Expect { status, headers, json })
    }
}

fn has_request(steps: &[Step]) -> bool {
    walk::steps(steps).any(|v| v.sent().is_some())
}

/// The value of a JSON template without expressions, to check against a message type when the
/// scenario loads; `None` if any part is rendered per request.
fn fixed_json(t: &JsonTemplate) -> Option<serde_json::Value> {
    Some(match t {
        JsonTemplate::Fixed(v) => v.clone(),
        JsonTemplate::String(_) => return None,
        JsonTemplate::Array(a) => serde_json::Value::Array(a.iter().map(fixed_json).collect::<Option<_>>()?),
        JsonTemplate::Object(o) => serde_json::Value::Object(
            o.iter().map(|(k, v)| Some((k.clone(), fixed_json(v)?))).collect::<Option<_>>()?,
        ),
    })
}

/// Checks that every key of `t` names a field of `desc` (by its proto or JSON name), through
/// nested messages and lists of them; the first that does not, as a message. Values are checked
/// when they are rendered (a template can render anything).
fn check_fields(desc: &prost_reflect::MessageDescriptor, t: &JsonTemplate) -> Result<(), String> {
    use prost_reflect::Kind;
    let JsonTemplate::Object(fields) = t else {
        return Err(format!("a `{}` message is written as a JSON object", desc.full_name()));
    };
    for (key, value) in fields {
        let Some(field) = desc.get_field_by_name(key).or_else(|| desc.get_field_by_json_name(key)) else {
            let names: Vec<String> = desc.fields().map(|f| f.name().to_owned()).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let hint = match template::suggest(key, &refs) {
                Some(s) => format!(" (did you mean `{s}`?)"),
                None => format!(" (its fields: {})", names.join(", ")),
            };
            return Err(format!("`{}` has no field `{key}`{hint}", desc.full_name()));
        };
        // Well-known types (Struct, Value, Any, Timestamp…) have JSON forms of their own.
        let Kind::Message(inner) = field.kind() else { continue };
        if field.is_map() || inner.full_name().starts_with("google.protobuf.") {
            continue;
        }
        match (field.is_list(), value) {
            (true, JsonTemplate::Array(items)) => {
                for item in items {
                    check_fields(&inner, item)?;
                }
            }
            (false, JsonTemplate::Object(_)) => check_fields(&inner, value)?,
            // Any other shape fails in full when rendered (or below, for a fixed message).
            _ => {}
        }
    }
    Ok(())
}

/// Where a `.proto` error is, as `file:line:column`, when protox says.
fn proto_error_place(e: &protox::Error) -> Option<String> {
    use miette::Diagnostic as _;
    let span = e.labels()?.next()?;
    let source = e.source_code()?;
    let contents = source.read_span(span.inner(), 0, 0).ok()?;
    let file = contents.name().map(str::to_owned).or_else(|| e.file().map(str::to_owned))?;
    Some(format!("{file}:{}:{}", contents.line() + 1, contents.column() + 1))
}

impl Compiler<'_> {
    /// Compiles `proto` (relative to the scenario file) with its include directories, once per
    /// scenario.
    fn proto(
        &self,
        proto: &Spanned<String>,
        include: &[Spanned<String>],
    ) -> Result<prost_reflect::DescriptorPool, ScenarioError> {
        let hint = || {
            Some(format!("the path is relative to the scenario file's directory ({})", self.dir.display()))
        };
        let path = std::fs::canonicalize(self.dir.join(&proto.value))
            .map_err(|e| self.at(&proto.referenced, format!("grpc.proto `{}`: {e}", proto.value), hint()))?;
        let Some(parent) = path.parent().map(Path::to_path_buf) else {
            return Err(self.at(
                &proto.referenced,
                format!("grpc.proto `{}` is not a file", proto.value),
                None,
            ));
        };
        let mut includes = vec![parent];
        for i in include {
            includes.push(
                std::fs::canonicalize(self.dir.join(&i.value)).map_err(|e| {
                    self.at(&i.referenced, format!("grpc.include `{}`: {e}", i.value), hint())
                })?,
            );
        }
        let key = (path, includes);
        if let Some(pool) = self.protos.borrow().get(&key) {
            return Ok(pool.clone());
        }
        let compiled = protox::Compiler::new(&key.1).and_then(|mut c| {
            c.include_imports(true).open_file(&key.0)?;
            Ok(c.descriptor_pool())
        });
        let pool = compiled.map_err(|e| {
            let place = proto_error_place(&e).map(|p| format!("{p}: ")).unwrap_or_default();
            self.at(
                &proto.referenced,
                format!("grpc.proto `{}` does not compile: {place}{e}", proto.value),
                Some(if e.is_file_not_found() {
                    "imports are looked up next to the file and in `include:` directories".into()
                } else {
                    "fix the .proto at the place shown; it must compile with protoc too".into()
                }),
            )
        })?;
        self.protos.borrow_mut().insert(key, pool.clone());
        Ok(pool)
    }

    /// The unary method `call` (`package.Service/Method`) names in `pool`.
    fn grpc_method(
        &self,
        pool: &prost_reflect::DescriptorPool,
        call: &Spanned<String>,
    ) -> Result<prost_reflect::MethodDescriptor, ScenarioError> {
        let text = call.value.trim_start_matches('/');
        let Some((service, method)) = text.rsplit_once('/') else {
            return Err(self.at(
                &call.referenced,
                format!("grpc.call `{}` is not `package.Service/Method`", call.value),
                Some("e.g. `call: shop.catalog.v1.Catalog/Search`".into()),
            ));
        };
        let Some(svc) = pool.get_service_by_name(service) else {
            let names: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let hint = match template::suggest(service, &refs) {
                Some(s) => format!("did you mean `{s}`?"),
                None if names.is_empty() => "the .proto defines no service".to_owned(),
                None => format!("services: {}", names.join(", ")),
            };
            return Err(self.at(&call.referenced, format!("grpc.call: no service `{service}`"), Some(hint)));
        };
        let Some(m) = svc.methods().find(|m| m.name() == method) else {
            let names: Vec<String> = svc.methods().map(|m| m.name().to_owned()).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let hint = match template::suggest(method, &refs) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("its methods: {}", names.join(", ")),
            };
            return Err(self.at(
                &call.referenced,
                format!("grpc.call: `{}` has no method `{method}`", svc.full_name()),
                Some(hint),
            ));
        };
        if m.is_client_streaming() {
            return Err(self.at(
                &call.referenced,
                format!("grpc.call: `{}` streams its request; gRPC steps send one message", m.full_name()),
                Some("call a unary or server-streaming method".into()),
            ));
        }
        Ok(m)
    }

    /// A `grpc:` step.
    #[allow(clippy::too_many_arguments)]
    fn grpc_step(
        &self,
        step: &Spanned<RawStep>,
        g: &Spanned<RawGrpc>,
        journey: &str,
        feeders: &[Feeder],
        captures: &mut Vec<String>,
        used: &std::cell::RefCell<Vec<usize>>,
        step_names: &mut Vec<Arc<str>>,
    ) -> Result<Step, ScenarioError> {
        let r = &step.value;
        let http_only = [
            ("get", r.get.is_some()),
            ("post", r.post.is_some()),
            ("put", r.put.is_some()),
            ("patch", r.patch.is_some()),
            ("delete", r.delete.is_some()),
            ("head", r.head.is_some()),
            ("headers", !r.headers.is_empty()),
            ("json", r.json.is_some()),
            ("body", r.body.is_some()),
            ("think", r.think.is_some()),
            ("loop", r.repeat.is_some()),
        ];
        if let Some((key, _)) = http_only.iter().find(|(_, given)| *given) {
            return Err(self.at(
                &step.referenced,
                format!("a `grpc:` step has no `{key}`"),
                Some("the message goes in `grpc: { message: … }`, headers in `grpc: { metadata: … }`; split other things into steps of their own".into()),
            ));
        }
        let raw = &g.value;
        let pool = self.proto(&raw.proto, &raw.include)?;
        let method = self.grpc_method(&pool, &raw.call)?;
        let path = http::uri::PathAndQuery::try_from(format!(
            "/{}/{}",
            method.parent_service().full_name(),
            method.name()
        ))
        .map_err(|e| self.at(&raw.call.referenced, format!("grpc.call: {e}"), None))?;

        let scope = JourneyScope { feeders, captures, used: std::cell::RefCell::new(Vec::new()) };
        let tpl = |text: &str, at: &Location| {
            Template::compile(text, &scope).map_err(|e| self.at(at, e.message, e.hint))
        };
        let message = match &raw.message {
            Some(m) => {
                let t = self.json(&m.value, &m.referenced, &scope)?;
                check_fields(&method.input(), &t)
                    .map_err(|e| self.at(&m.referenced, format!("grpc.message: {e}"), None))?;
                t
            }
            None => JsonTemplate::Object(Vec::new()),
        };
        // A message without templates is built and encoded once, here: a mistake in it is an
        // error at load, and calls send the same bytes.
        let encoded = match fixed_json(&message) {
            None => None,
            Some(fixed) => {
                let built = prost_reflect::DynamicMessage::deserialize(method.input(), fixed).map_err(|e| {
                    let at = raw.message.as_ref().map_or(&g.referenced, |m| &m.referenced);
                    self.at(
                        at,
                        format!("grpc.message does not fit `{}`: {e}", method.input().full_name()),
                        Some("write it in protobuf's JSON mapping: proto field names, numbers, enum names as strings".into()),
                    )
                })?;
                Some(bytes::Bytes::from(prost::Message::encode_to_vec(&built)))
            }
        };
        let mut metadata = Vec::new();
        for (k, v) in &raw.metadata {
            let key = tonic::metadata::AsciiMetadataKey::from_bytes(k.as_bytes()).map_err(|_| {
                self.at(
                    &v.referenced,
                    format!("grpc.metadata: `{k}` is not an ASCII metadata key"),
                    Some(
                        "lower-case letters, digits, `-`, `_`, `.`; binary (`-bin`) keys are not supported"
                            .into(),
                    ),
                )
            })?;
            if k.ends_with("-bin") || key.as_str() == synth_ctx::http::SYNTHETIC_TRAFFIC.as_str() {
                return Err(self.at(
                    &v.referenced,
                    format!("grpc.metadata: `{k}` cannot be set here"),
                    Some(
                        "binary keys are not supported; `synthetic-traffic` is always the run's marker"
                            .into(),
                    ),
                ));
            }
            metadata.push((key, tpl(&v.value, &v.referenced)?));
        }
        let target = match &raw.target {
            None => None,
            Some(t) => {
                let hint = Some("an absolute URL, e.g. `target: http://127.0.0.1:50051` or `\"{{ env('CATALOG_URL') }}\"`".to_owned());
                let rendered = tpl(&t.value, &t.referenced)?;
                let Some(text) = rendered.as_literal() else {
                    return Err(self.at(&t.referenced, "grpc.target cannot change per request", hint));
                };
                let uri: Uri = text.parse().map_err(|_| {
                    self.at(&t.referenced, format!("grpc.target `{text}` is not a URL"), hint.clone())
                })?;
                if uri.scheme_str().is_none_or(|s| s != "http" && s != "https") || uri.authority().is_none() {
                    return Err(self.at(
                        &t.referenced,
                        "grpc.target must be an http:// or https:// URL with a host",
                        hint,
                    ));
                }
                Some(uri)
            }
        };
        let (expect_status, expect_metadata, expect_json) = match &r.expect {
            None => (vec![crate::stats::GrpcCode::Ok], Vec::new(), Vec::new()),
            Some(e) => {
                if let Some(s) = &e.status {
                    return Err(self.at(
                        &s.referenced,
                        "a gRPC step expects `grpc_status`, not an HTTP `status`",
                        Some("e.g. `expect: { grpc_status: OK }` or `[OK, NOT_FOUND]`".into()),
                    ));
                }
                let codes = match &e.grpc_status {
                    None => vec![crate::stats::GrpcCode::Ok],
                    Some(s) => {
                        let names = match &s.value {
                            RawGrpcStatus::One(n) => vec![n.clone()],
                            RawGrpcStatus::Many(n) => n.clone(),
                        };
                        if names.is_empty() {
                            return Err(self.at(&s.referenced, "expect.grpc_status: no status", None));
                        }
                        let mut codes = Vec::new();
                        for n in &names {
                            let Some(c) = crate::stats::GrpcCode::from_name(n) else {
                                let all: Vec<&str> =
                                    crate::stats::GrpcCode::ALL.iter().map(|c| c.as_str()).collect();
                                let hint = template::suggest(&n.to_uppercase(), &all).map_or_else(
                                    || format!("one of {}", all.join(", ")),
                                    |s| format!("did you mean `{s}`?"),
                                );
                                return Err(self.at(
                                    &s.referenced,
                                    format!("expect.grpc_status: `{n}` is not a gRPC status"),
                                    Some(hint),
                                ));
                            };
                            codes.push(c);
                        }
                        codes
                    }
                };
                let rest = self.expect(&RawExpect {
                    status: None,
                    grpc_status: None,
                    header: e.header.clone(),
                    json: e.json.clone(),
                })?;
                (codes, rest.headers, rest.json)
            }
        };
        merge_used(used, scope.used.into_inner());
        // Captures become visible to later steps only.
        let caps = self.captures(&r.capture, captures)?;
        let step_name = r.name.clone().unwrap_or_else(|| {
            format!("{journey}: grpc {}/{}", method.parent_service().name(), method.name())
        });
        let stat = stat_of(step_names, &step_name);
        Ok(Step::Grpc(Box::new(GrpcCall {
            stat,
            server_streaming: method.is_server_streaming(),
            target,
            method,
            path,
            message,
            encoded,
            metadata,
            captures: caps,
            expect_status,
            expect_metadata,
            expect_json,
            expect_path: self.names(&r.expect_path, "expect_path")?,
            expect_guards: self.names(&r.expect_guards, "expect_guards")?,
        })))
    }
}

/// The statistics index of the step named `name`: steps of one name share a row of the report.
fn stat_of(step_names: &mut Vec<Arc<str>>, name: &str) -> usize {
    match step_names.iter().position(|n| **n == *name) {
        Some(i) => i,
        None => {
            step_names.push(Arc::from(name));
            step_names.len() - 1
        }
    }
}

/// Adds the feeders a step's templates read to its journey's.
fn merge_used(used: &std::cell::RefCell<Vec<usize>>, step: Vec<usize>) {
    let mut u = used.borrow_mut();
    for f in step {
        if !u.contains(&f) {
            u.push(f);
        }
    }
}
