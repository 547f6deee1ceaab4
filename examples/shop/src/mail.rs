//! Order confirmation emails through synth's guarded lettre transport: to a directory of `.eml`
//! files (default) or to an SMTP server (`SMTP_URL=smtp://host:port`, plain SMTP as a local
//! relay or sink speaks it).

use std::path::{Path, PathBuf};

use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor, message::Mailbox,
};
use synth_guards::email::{GuardedError, GuardedTransport, Sent};

/// Why an email could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The SMTP URL is not `smtp://host:port`.
    #[error("SMTP_URL must look like smtp://127.0.0.1:2525, got `{0}`")]
    Url(String),
    /// A bad address or message.
    #[error("building the message: {0}")]
    Message(String),
    /// The guard refused it: a reserved synthetic address outside a synthetic request (counted
    /// by the guard as context lost).
    #[error("refused: {0}")]
    ContextLost(String),
    /// The guard refused it, or the transport failed.
    #[error("sending: {0}")]
    Send(String),
}

fn sent<T, E: std::fmt::Display>(result: Result<Sent<T>, GuardedError<E>>) -> Result<bool, MailError> {
    match result {
        Ok(s) => Ok(s.was_delivered()),
        Err(e @ GuardedError::ContextLost { .. }) => Err(MailError::ContextLost(e.to_string())),
        Err(e) => Err(MailError::Send(e.to_string())),
    }
}

/// Where confirmations go.
#[derive(Debug)]
pub enum Mailer {
    /// `.eml` files in a directory.
    File {
        /// The guarded transport.
        transport: GuardedTransport<AsyncFileTransport<Tokio1Executor>>,
        /// The directory.
        dir: PathBuf,
    },
    /// An SMTP server.
    Smtp(GuardedTransport<AsyncSmtpTransport<Tokio1Executor>>),
}

impl Mailer {
    /// Files in `dir` (created if missing).
    pub fn to_dir(dir: &Path) -> std::io::Result<Mailer> {
        std::fs::create_dir_all(dir)?;
        Ok(Mailer::File {
            transport: GuardedTransport::new(AsyncFileTransport::<Tokio1Executor>::new(dir)),
            dir: dir.to_owned(),
        })
    }

    /// Plain SMTP to `smtp://host:port`.
    pub fn to_smtp(url: &str) -> Result<Mailer, MailError> {
        let rest = url.strip_prefix("smtp://").ok_or_else(|| MailError::Url(url.to_owned()))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| MailError::Url(url.to_owned()))?),
            None => (rest, 25),
        };
        if host.is_empty() {
            return Err(MailError::Url(url.to_owned()));
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port).build();
        Ok(Mailer::Smtp(GuardedTransport::new(transport)))
    }

    /// Counts into `guard` (the orders service's own `email` guard).
    pub fn with_guard(self, guard: synth_guards::Guard) -> Mailer {
        match self {
            Mailer::File { transport, dir } => Mailer::File { transport: transport.with_guard(guard), dir },
            Mailer::Smtp(transport) => Mailer::Smtp(transport.with_guard(guard)),
        }
    }

    /// Sends the confirmation of `order` to `to`. `Ok(true)` when delivered, `Ok(false)` when
    /// the guard suppressed it (a synthetic request), [`MailError::ContextLost`] when it refused
    /// a reserved synthetic address in a real request.
    pub async fn send_confirmation(&self, to: &str, order: i64, total_cents: u64) -> Result<bool, MailError> {
        let to: Mailbox =
            to.parse().map_err(|e: lettre::address::AddressError| MailError::Message(e.to_string()))?;
        let from: Mailbox = "Shop <orders@shop.example>"
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Message(e.to_string()))?;
        let message = Message::builder()
            .from(from)
            .to(to)
            .subject(format!("Your order {order}"))
            .body(format!(
                "Thank you! Order {order}, total {}.{:02}.\n",
                total_cents / 100,
                total_cents % 100
            ))
            .map_err(|e| MailError::Message(e.to_string()))?;
        match self {
            Mailer::File { transport, .. } => sent(transport.send(message).await),
            Mailer::Smtp(transport) => sent(transport.send(message).await),
        }
    }
}

/// How many `.eml` files are in `dir`.
pub fn count_eml(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        if entry?.path().extension().is_some_and(|e| e == "eml") {
            n += 1;
        }
    }
    Ok(n)
}
