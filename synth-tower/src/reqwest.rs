//! A `reqwest-middleware` middleware (feature `reqwest`).
//!
//! ```
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(synth_tower::reqwest::PropagateSyntheticMiddleware::new())
//!     .build();
//! # drop(client);
//! ```

use http::Extensions;
use opentelemetry::Context;
use reqwest_middleware::{Middleware, Next, Result};

use crate::client::{collect_report, prepare_outgoing};

/// Inside a synthetic scope, sends the marker (header and baggage member, other members kept)
/// and adds the downstream path report to the current trail. Adds nothing to real requests.
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateSyntheticMiddleware {
    _priv: (),
}

impl PropagateSyntheticMiddleware {
    /// A new middleware.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl Middleware for PropagateSyntheticMiddleware {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<reqwest::Response> {
        let trail = Context::map_current(|cx| prepare_outgoing(cx, req.headers_mut()));
        let res = next.run(req, extensions).await?;
        if let Some(trail) = trail {
            collect_report(&trail, res.headers());
        }
        Ok(res)
    }
}
