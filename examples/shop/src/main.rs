//! `shop`: run the example shop, all in one process or one service per process.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use shop::{
    MailTarget, Shop, ShopConfig, admin_of, catalog, catalog_v2,
    common::{Shutdown, install_metrics, serve},
    gateway,
    mail::Mailer,
    orders, recorder,
    store::Store,
};
use synth_ctx::{KeyRing, Verifier};

const AFTER_HELP: &str = "\
Every service verifies the synthetic-traffic marker with the keys in SYNTH_KEYS (`kid:secret`,
make one with `loadgen keygen`) or --keys-file, and prints `<service> listening on http://ADDR`.

Examples:
  # The whole shop in one process (SQLite file, .eml files):
  SYNTH_KEYS=$(loadgen keygen) shop all
  # One service per process, on PostgreSQL and a real SMTP server:
  shop payments --listen 127.0.0.1:7003 &
  shop fraud    --listen 127.0.0.1:7004 &
  shop catalog  --listen 127.0.0.1:7001 &
  DATABASE_URL=postgres://shop@127.0.0.1/shop SMTP_URL=smtp://127.0.0.1:2525 \\
    shop orders --listen 127.0.0.1:7002 --payments http://127.0.0.1:7003 --fraud http://127.0.0.1:7004 &
  shop catalog-v2 --listen 127.0.0.1:7005 &   # dark: gets a copy of each real search
  shop gateway --listen 127.0.0.1:8080 --catalog http://127.0.0.1:7001 --orders http://127.0.0.1:7002 \\
    --dark-catalog http://127.0.0.1:7005";

/// The example shop of synth.
#[derive(Debug, Parser)]
#[command(name = "shop", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    service: Service,
    /// Read the marker keys from this file instead of SYNTH_KEYS.
    #[arg(long, global = true, env = "SYNTH_KEYS_FILE")]
    keys_file: Option<PathBuf>,
    /// Also stop when standard input closes (for supervisors and tests: the service ends with
    /// the process that started it).
    #[arg(long, global = true, hide = true)]
    stop_on_stdin_eof: bool,
}

#[derive(Debug, Subcommand)]
enum Service {
    /// Every service in this process, each on a free loopback port.
    All(Storage),
    /// The public HTTP API.
    Gateway {
        #[command(flatten)]
        listen: Listen,
        /// Base URL of the catalogue (gRPC).
        #[arg(long)]
        catalog: String,
        /// Base URL of the orders service.
        #[arg(long)]
        orders: String,
        /// Base URL of the dark catalog-v2: every real search is mirrored there, marked `dark`,
        /// and the answers compared (`/metrics`: synth_mirror_*; admin: /synthetic/mirror).
        #[arg(long)]
        dark_catalog: Option<String>,
        /// Record real users' GETs here (JSON Lines, credentials dropped) for `loadgen replay`;
        /// synthetic requests, replayed ones included, are never recorded (`/stats`: capture).
        #[arg(long)]
        capture_dir: Option<PathBuf>,
        /// Where the admin API (kill switch) listens.
        #[arg(long, default_value = "127.0.0.1:0")]
        admin_listen: SocketAddr,
        /// Bearer token of the admin API (empty: the admin API refuses every call).
        #[arg(long, env = "SHOP_ADMIN_TOKEN", hide_env_values = true, default_value = "")]
        admin_token: String,
    },
    /// Products and search (gRPC).
    Catalog(Listen),
    /// The next search, deployed dark: answers mirrored searches (HTTP), records them (tagged).
    #[command(name = "catalog-v2")]
    CatalogV2 {
        #[command(flatten)]
        listen: Listen,
        /// sqlite:… or postgres://… (the `searches` table).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = "sqlite://shop.db")]
        database_url: String,
    },
    /// Orders: database, fraud check, payment, email.
    Orders {
        #[command(flatten)]
        listen: Listen,
        /// Base URL of the payment provider.
        #[arg(long)]
        payments: String,
        /// Base URL of the fraud-check API.
        #[arg(long)]
        fraud: String,
        #[command(flatten)]
        storage: Storage,
    },
    /// The payment provider stand-in (records charges).
    Payments(Listen),
    /// The fraud-check stand-in (records calls).
    Fraud(Listen),
}

#[derive(Debug, Args)]
struct Listen {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[derive(Debug, Args)]
struct Storage {
    /// sqlite:… or postgres://…
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = "sqlite://shop.db")]
    database_url: String,
    /// smtp://host:port; without it, emails are written as .eml files to --mail-dir.
    #[arg(long, env = "SMTP_URL")]
    smtp_url: Option<String>,
    /// Where emails go without --smtp-url.
    #[arg(long, default_value = "shop-mail")]
    mail_dir: PathBuf,
}

impl Storage {
    fn mail(&self) -> MailTarget {
        match &self.smtp_url {
            Some(url) => MailTarget::Smtp(url.clone()),
            None => MailTarget::Dir(self.mail_dir.clone()),
        }
    }
}

fn listening(name: &str, addr: SocketAddr) {
    println!("{name} listening on http://{addr}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let keys = match &cli.keys_file {
        Some(path) => KeyRing::from_file(path),
        None => KeyRing::from_env(),
    }
    .context("reading the marker keys (set SYNTH_KEYS=kid:secret; `loadgen keygen` makes one)")?;
    let verifier = Verifier::new(keys);
    install_metrics();
    let shutdown = Shutdown::new();
    // Kept alive until Ctrl-C.
    let mut _shop = None;
    match cli.service {
        Service::All(storage) => {
            let shop = Shop::start(ShopConfig {
                verifier,
                database_url: storage.database_url.clone(),
                mail: storage.mail(),
                admin_token: std::env::var("SHOP_ADMIN_TOKEN").unwrap_or_default(),
                capture_dir: None,
            })
            .await?;
            for (name, url) in shop.services() {
                println!("{name} listening on {url}");
            }
            listening("gateway-admin", shop.admin);
            _shop = Some(shop);
        }
        Service::Gateway {
            listen,
            catalog,
            orders,
            dark_catalog,
            capture_dir,
            admin_listen,
            admin_token,
        } => {
            let (app, base, _) =
                gateway::router(verifier, &catalog, &orders, dark_catalog.as_deref(), capture_dir.as_deref())
                    .map_err(anyhow::Error::msg)?;
            listening("gateway", serve(listen.listen, app, &shutdown).await?);
            listening("gateway-admin", serve(admin_listen, admin_of(&base, &admin_token), &shutdown).await?);
        }
        Service::Catalog(listen) => {
            let (app, _) = catalog::router(verifier);
            listening("catalog", serve(listen.listen, app, &shutdown).await?);
        }
        Service::CatalogV2 { listen, database_url } => {
            let store = Store::open(&database_url).await?;
            let (app, ..) = catalog_v2::router(verifier, store);
            listening("catalog-v2", serve(listen.listen, app, &shutdown).await?);
        }
        Service::Orders { listen, payments, fraud, storage } => {
            let store = Store::open(&storage.database_url).await?;
            let mailer = match storage.mail() {
                MailTarget::Dir(dir) => Mailer::to_dir(&dir)?,
                MailTarget::Smtp(url) => Mailer::to_smtp(&url)?,
            };
            let (app, ..) = orders::router(verifier, store, mailer, orders::Downstream { payments, fraud });
            listening("orders", serve(listen.listen, app, &shutdown).await?);
        }
        Service::Payments(listen) => {
            let (app, ..) = recorder::payments(verifier);
            listening("payments", serve(listen.listen, app, &shutdown).await?);
        }
        Service::Fraud(listen) => {
            let (app, ..) = recorder::fraud(verifier);
            listening("fraud", serve(listen.listen, app, &shutdown).await?);
        }
    }
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    // Without the flag the sender stays alive, so only Ctrl-C ends the wait.
    let _keep_open = if cli.stop_on_stdin_eof {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = eof_tx.send(());
        });
        None
    } else {
        Some(eof_tx)
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = eof_rx => {}
    }
    shutdown.fire();
    Ok(())
}
