//! The gRPC client of the reader's journal service, with TLS and the bearer token as configured.

use std::time::Duration;

use common::proto::journal_client::JournalClient;

use crate::config::Config;
use crate::error::ApplyError;

/// HTTP/2 ping interval, and how long a ping may go unanswered before the connection counts as lost.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// A client of the reader's journal service that sends the bearer token.
pub type ReaderClient = JournalClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, common::grpc_security::BearerToken>,
>;

pub async fn connect(config: &Config) -> Result<ReaderClient, ApplyError> {
    let url = &config.reader_url;
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
