//! The gRPC client of the reader's journal service, with TLS and the bearer token as configured.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::proto::journal_client::JournalClient;
use common::proto::GetInfoRequest;
use tracing::info;

use crate::config::Config;
use crate::error::ApplyError;

/// HTTP/2 ping interval, and how long a ping may go unanswered before the connection counts as lost.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// A client of the reader's journal service that sends the bearer token.
pub type ReaderClient = JournalClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, common::grpc_security::BearerToken>,
>;

/// Which of several reader addresses answered last as the active reader (tried first next time).
static PREFERRED: AtomicUsize = AtomicUsize::new(0);

/// Connects to the reader; with several addresses (readers of one JetStream journal), to the active one if any
/// answers, else to a standby (it serves the same journal), trying the last good one first.
pub async fn connect(config: &Config) -> Result<ReaderClient, ApplyError> {
    let urls: Vec<&str> = config.reader_url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    if urls.len() <= 1 {
        return connect_one(config, urls.first().copied().unwrap_or_default()).await;
    }
    let start = PREFERRED.load(Ordering::Relaxed) % urls.len();
    let (mut standby, mut failed) = (None, None);
    for i in 0..urls.len() {
        let at = (start + i) % urls.len();
        let mut client = match connect_one(config, urls[at]).await {
            Ok(c) => c,
            Err(e) => {
                failed = Some(e);
                continue;
            }
        };
        match client.get_info(GetInfoRequest {}).await {
            Ok(answer) if answer.get_ref().role != "standby" => {
                if PREFERRED.swap(at, Ordering::Relaxed) != at {
                    info!(reader = urls[at], "connected to the active reader");
                }
                return Ok(client);
            }
            Ok(_) => {
                standby.get_or_insert((at, client));
            }
            Err(status) => failed = Some(refused("GetInfo")(status)),
        }
    }
    match (standby, failed) {
        (Some((at, client)), _) => {
            PREFERRED.store(at, Ordering::Relaxed);
            info!(reader = urls[at], "no active reader answers: connected to a standby (it serves the same journal)");
            Ok(client)
        }
        (None, Some(e)) => Err(e),
        (None, None) => connect_one(config, urls[start]).await,
    }
}

async fn connect_one(config: &Config, url: &str) -> Result<ReaderClient, ApplyError> {
    let url = &url.to_owned();
    let settings = |reason: String| ApplyError::ReaderSettings { url: url.clone(), reason };
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| settings(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        // A link that goes silent (packets vanish, no reset) is noticed within KEEPALIVE twice, not left hanging.
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true);
    if let Some(tls) = config.reader_tls.client_tls().map_err(settings)? {
        endpoint = endpoint.tls_config(tls).map_err(|e| settings(format!("TLS settings: {e}")))?;
    }
    let channel =
        endpoint.connect().await.map_err(|source| ApplyError::ReaderUnreachable { url: url.clone(), source })?;
    let token = common::grpc_security::BearerToken::new(config.security.auth_token.as_ref()).map_err(settings)?;
    // One record is one source transaction, which can be far larger than gRPC's 4 MiB default.
    Ok(JournalClient::with_interceptor(channel, token).max_decoding_message_size(usize::MAX))
}

/// Turns a refusal of `call` into an [`ApplyError::ReaderRefused`].
pub fn refused(call: &'static str) -> impl FnOnce(tonic::Status) -> ApplyError {
    move |status| ApplyError::ReaderRefused { call, status }
}
