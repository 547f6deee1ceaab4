//! The whole shop in one process, each service on its own loopback port.

use std::{net::SocketAddr, path::PathBuf};

use synth_ctx::Verifier;
use synth_tower::{KillSwitch, admin::admin_router, capture::CaptureHandle, mirror::MirrorHandle};

use crate::{
    catalog, catalog_v2,
    common::{ServiceBase, Shutdown, install_metrics, serve},
    gateway,
    mail::Mailer,
    orders, recorder,
    store::Store,
};

/// Where mail goes.
#[derive(Clone, Debug)]
pub enum MailTarget {
    /// `.eml` files in this directory.
    Dir(PathBuf),
    /// Plain SMTP, `smtp://host:port`.
    Smtp(String),
}

/// How to start the shop.
#[derive(Clone, Debug)]
pub struct ShopConfig {
    /// Verifies markers at every service.
    pub verifier: Verifier,
    /// `sqlite:…` or `postgres://…`.
    pub database_url: String,
    /// Where confirmations go.
    pub mail: MailTarget,
    /// Bearer token of the gateway's admin API (kill switch).
    pub admin_token: String,
    /// Where the gateway records real users' browsing for replay
    /// ([`gateway::browsing_capture`]); `None`: no capture.
    pub capture_dir: Option<PathBuf>,
}

/// A running shop. Dropping it stops every server.
#[derive(Debug)]
pub struct Shop {
    /// The public API.
    pub gateway: SocketAddr,
    /// The gateway's admin API (`POST /synthetic/stop`, `/synthetic/resume`).
    pub admin: SocketAddr,
    /// gRPC catalogue.
    pub catalog: SocketAddr,
    /// The dark `catalog-v2` (HTTP), which gets a copy of every real search.
    pub catalog_v2: SocketAddr,
    /// Orders.
    pub orders: SocketAddr,
    /// Payment provider stand-in.
    pub payments: SocketAddr,
    /// Fraud-check stand-in.
    pub fraud: SocketAddr,
    /// The gateway's kill switch (it stops the mirror too).
    pub kill: KillSwitch,
    /// The gateway's search mirror: on and off, share, counters.
    pub mirror: MirrorHandle,
    /// The gateway's capture of real users' browsing, when [`ShopConfig::capture_dir`] asked
    /// for one.
    pub capture: Option<CaptureHandle>,
    /// The database the orders service writes to.
    pub store: Store,
    shutdown: Shutdown,
}

/// Why the shop did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound.
    #[error("binding a port: {0}")]
    Bind(#[from] std::io::Error),
    /// The database.
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The mail transport.
    #[error("mail: {0}")]
    Mail(#[from] crate::mail::MailError),
    /// A bad URL between services.
    #[error("{0}")]
    Config(String),
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Shop {
    /// Starts every service on a free loopback port.
    pub async fn start(config: ShopConfig) -> Result<Shop, StartError> {
        install_metrics();
        let shutdown = Shutdown::new();
        let v = &config.verifier;
        let (app, ..) = recorder::payments(v.clone());
        let payments = serve(loopback(), app, &shutdown).await?;
        let (app, ..) = recorder::fraud(v.clone());
        let fraud = serve(loopback(), app, &shutdown).await?;
        let (app, _) = catalog::router(v.clone());
        let catalog = serve(loopback(), app, &shutdown).await?;

        let store = Store::open(&config.database_url).await?;
        let (app, ..) = catalog_v2::router(v.clone(), store.clone());
        let catalog_v2 = serve(loopback(), app, &shutdown).await?;
        let mailer = match &config.mail {
            MailTarget::Dir(dir) => Mailer::to_dir(dir)?,
            MailTarget::Smtp(url) => Mailer::to_smtp(url)?,
        };
        let downstream =
            orders::Downstream { payments: format!("http://{payments}"), fraud: format!("http://{fraud}") };
        let (app, ..) = orders::router(v.clone(), store.clone(), mailer, downstream);
        let orders = serve(loopback(), app, &shutdown).await?;

        let (app, base, _) = gateway::router(
            v.clone(),
            &format!("http://{catalog}"),
            &format!("http://{orders}"),
            Some(&format!("http://{catalog_v2}")),
            config.capture_dir.as_deref(),
        )
        .map_err(StartError::Config)?;
        let gateway = serve(loopback(), app, &shutdown).await?;
        let admin = serve(loopback(), admin_of(&base, &config.admin_token), &shutdown).await?;
        let mirror =
            base.mirror.clone().ok_or_else(|| StartError::Config("the gateway has no mirror".into()))?;
        Ok(Shop {
            gateway,
            admin,
            catalog,
            catalog_v2,
            orders,
            payments,
            fraud,
            kill: base.kill,
            mirror,
            capture: base.capture,
            store,
            shutdown,
        })
    }

    /// Base URLs by service name, in the order requests flow (the dark `catalog-v2` last: it is
    /// on no request's path).
    pub fn services(&self) -> Vec<(&'static str, String)> {
        [
            ("gateway", self.gateway),
            ("catalog", self.catalog),
            ("orders", self.orders),
            ("payments", self.payments),
            ("fraud", self.fraud),
            ("catalog-v2", self.catalog_v2),
        ]
        .into_iter()
        .map(|(n, a)| (n, format!("http://{a}")))
        .collect()
    }

    /// Stops every server (in-flight requests finish).
    pub fn stop(&self) {
        self.shutdown.fire();
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.shutdown.fire();
    }
}

/// The gateway's admin router for `base`: kill switch and status, and with a mirror
/// `GET`/`POST /synthetic/mirror` (its counters and samples; on, off, share).
pub fn admin_of(base: &ServiceBase, token: &str) -> axum::Router {
    let admin = admin_router(base.kill.clone(), base.stats.clone(), token);
    match &base.mirror {
        Some(mirror) => admin.merge(synth_tower::mirror::admin_router(mirror.clone(), token)),
        None => admin,
    }
}
