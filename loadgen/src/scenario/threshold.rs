//! Thresholds: `p95 < 300ms`, `error_rate < 1%`, `mean <= 50ms`, `max < 2s`.

use std::time::Duration;

/// What a threshold measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Metric {
    /// A latency percentile, 0 < p <= 100.
    Percentile(f64),
    /// Mean latency.
    Mean,
    /// Maximum latency.
    Max,
    /// Failed requests / all requests.
    ErrorRate,
}

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A pass/fail condition on the run's results.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// As written.
    pub text: String,
    /// What it measures.
    pub metric: Metric,
    /// How it compares.
    pub op: Op,
    /// The bound: seconds for latencies, a fraction for rates.
    pub bound: f64,
    /// Only this step (default: all requests).
    pub step: Option<String>,
    /// Stop the run as soon as it fails.
    pub abort_on_fail: bool,
}

/// Why a threshold's text could not be read (the message says how to write it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidThreshold(String);

impl From<String> for InvalidThreshold {
    fn from(s: String) -> Self {
        InvalidThreshold(s)
    }
}

impl Threshold {
    /// Parses `metric op value`: `p95 < 300ms`, `error_rate < 1%`, `max <= 2s`.
    ///
    /// ```
    /// use loadgen::Threshold;
    ///
    /// let t = Threshold::parse("p99 < 1s")?.for_step("place order").abort_on_fail(true);
    /// assert!(t.passes(0.5) && !t.passes(1.5));
    /// assert!(Threshold::parse("p95 fast").is_err());
    /// # Ok::<(), loadgen::InvalidThreshold>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self, InvalidThreshold> {
        Ok(Self::parse_text(text)?)
    }

    /// Only requests named `step` (a YAML step's name, or a Rust request's `.name(..)`).
    #[must_use]
    pub fn for_step(mut self, step: impl Into<String>) -> Self {
        self.step = Some(step.into());
        self
    }

    /// Stop the run as soon as it fails (checked every second).
    #[must_use]
    pub fn abort_on_fail(mut self, abort: bool) -> Self {
        self.abort_on_fail = abort;
        self
    }

    fn parse_text(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (metric_s, op, value_s) = ["<=", ">=", "<", ">"]
            .iter()
            .find_map(|op| t.split_once(op).map(|(m, v)| (m.trim(), *op, v.trim())))
            .ok_or_else(|| format!("`{t}`: expected `metric < value`"))?;
        let op = match op {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            _ => Op::Ge,
        };
        let metric = match metric_s {
            "mean" | "avg" => Metric::Mean,
            "max" => Metric::Max,
            "error_rate" | "errors" => Metric::ErrorRate,
            p if p.starts_with('p') => {
                let n: f64 = p[1..]
                    .parse()
                    .map_err(|_| format!("`{p}` is not a percentile; write p50, p95, p99, p99.9"))?;
                if !(n > 0.0 && n <= 100.0) {
                    return Err(format!("`{p}`: percentiles are between 0 and 100"));
                }
                Metric::Percentile(n)
            }
            other => return Err(format!("unknown metric `{other}`; use p95, p99, mean, max, error_rate")),
        };
        let bound = if metric == Metric::ErrorRate {
            match value_s.strip_suffix('%') {
                Some(pct) => {
                    pct.trim().parse::<f64>().map_err(|_| format!("`{value_s}` is not a percentage"))? / 100.0
                }
                None => {
                    value_s.parse::<f64>().map_err(|_| format!("`{value_s}` is not a rate; write e.g. 1%"))?
                }
            }
        } else {
            crate::duration::parse(value_s).map(|d: Duration| d.as_secs_f64()).map_err(|e| e.to_string())?
        };
        Ok(Threshold { text: t.to_owned(), metric, op, bound, step: None, abort_on_fail: false })
    }

    /// Whether `value` (seconds or a fraction) passes.
    pub fn passes(&self, value: f64) -> bool {
        match self.op {
            Op::Lt => value < self.bound,
            Op::Le => value <= self.bound,
            Op::Gt => value > self.bound,
            Op::Ge => value >= self.bound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let t = Threshold::parse("p95 < 300ms").unwrap();
        assert_eq!((t.metric, t.op, t.bound), (Metric::Percentile(95.0), Op::Lt, 0.3));
        let t = Threshold::parse("error_rate < 1%").unwrap();
        assert_eq!((t.metric, t.bound), (Metric::ErrorRate, 0.01));
        assert_eq!(Threshold::parse("p99.9 <= 1s").unwrap().metric, Metric::Percentile(99.9));
        assert_eq!(Threshold::parse("mean>=5ms").unwrap().op, Op::Ge);
        for bad in ["p95", "p95 < fast", "p0 < 1s", "latency < 1s", "error_rate < lots"] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
        assert!(Threshold::parse("p95 < 300ms").unwrap().passes(0.299));
        assert!(!Threshold::parse("p95 < 300ms").unwrap().passes(0.3));
    }
}
