//! Log lines that say whether they were written for a synthetic request (feature `tracing`).
//!
//! [`SyntheticFields`] wraps a `tracing-subscriber` event formatter. Inside a synthetic scope
//! it adds `synthetic`, `synthetic.origin` and `synthetic.run` to the line: as the first JSON
//! fields for the JSON format, as `key=value` pairs in front for the text formats. Outside a
//! synthetic scope the line is exactly the inner formatter's.
//!
//! ```
//! use synth_guards::telemetry::logs::SyntheticFields;
//!
//! let subscriber = tracing_subscriber::fmt()
//!     .json()
//!     .map_event_format(SyntheticFields::new)
//!     .finish();
//! # drop(subscriber);
//! ```
//!
//! It is an event formatter, not a `Layer`: `tracing` events are immutable once emitted, so a
//! layer cannot add fields to them; the formatter is where a log line gets its fields.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Adds the synthetic fields to the lines of an inner event formatter.
#[derive(Clone, Debug)]
pub struct SyntheticFields<F> {
    inner: F,
}

impl<F> SyntheticFields<F> {
    /// Wraps `inner` (e.g. `tracing_subscriber::fmt::format().json()`).
    pub fn new(inner: F) -> Self {
        SyntheticFields { inner }
    }
}

impl<S, N, F> FormatEvent<S, N> for SyntheticFields<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(s) = synth_ctx::current() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        // Origins and run ids are `A-Z a-z 0-9 - _`: nothing to escape in JSON or text.
        let (origin, run) = (s.origin(), s.run());
        match line.strip_prefix('{') {
            Some(rest) => {
                let sep = if rest.trim_start().starts_with('}') { "" } else { "," };
                write!(
                    writer,
                    "{{\"synthetic\":true,\"synthetic.origin\":\"{origin}\",\"synthetic.run\":\"{run}\"{sep}{rest}"
                )
            }
            None => write!(writer, "synthetic=true synthetic.origin={origin} synthetic.run={run} {line}"),
        }
    }
}
