//! Which of several readers of one JetStream journal reads the primary's binlog: the one holding the lease.
//!
//! The lease is the one message of subject `replica.<name>.lease` in stream `REPLICA_<name>_LEASE`, whose
//! messages expire after the lease time. Taking it publishes with `Nats-Expected-Last-Subject-Sequence` of the
//! subject's current last sequence (0 once the holder's message expired), renewing with the holder's own: the
//! stream accepts exactly one of several readers trying at once. The lease only decides who should write;
//! what keeps a paused holder from writing after another took over is the journal's own fencing (every append
//! names the stream sequence it follows, see `jetstream_store`).

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use super::error::JournalError;
use super::jetstream_store::JetStreamConfig;

const EXPECTED_LAST_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence";

pub struct Lease {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    /// Who this reader is: its host name and gRPC address.
    pub me: String,
    pub ttl: Duration,
    /// The sequence of this reader's last lease message, while it holds the lease.
    held: Option<u64>,
}

fn js_err(what: &str, e: impl std::fmt::Display) -> JournalError {
    JournalError::JetStream(format!("{what}: {e}"))
}

impl Lease {
    /// Connects and opens (or creates) the lease stream of the journal `config` names.
    pub async fn open(config: &JetStreamConfig, me: String, ttl: Duration) -> Result<Self, JournalError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("replica-reader lease {me}"))
            .retry_on_initial_connect()
            .connect(config.urls.as_slice())
            .await
            .map_err(|e| js_err(&format!("connecting to {}", config.urls.join(",")), e))?;
        let js = jetstream::new(client);
        let name = format!("{}_LEASE", config.stream_name());
        let subject = format!("{}.lease", config.subject_prefix());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                max_messages_per_subject: 1,
                max_age: ttl,
                description: Some(format!("which reader of {} reads the binlog", config.name)),
                ..Default::default()
            })
            .await
            .map_err(|e| js_err(&format!("creating stream {name}"), e))?;
        Ok(Self { js, stream, subject, me, ttl, held: None })
    }

    /// The current holder and its lease message's sequence (None once the lease expired).
    pub async fn holder(&self) -> Result<Option<(String, u64)>, JournalError> {
        match self.stream.raw_message_builder().last_by_subject(self.subject.clone()).send().await {
            Ok(m) => Ok(Some((String::from_utf8_lossy(&m.payload).into_owned(), m.sequence))),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(js_err("reading the lease", e)),
        }
    }

    /// Publishes a lease message expecting `after` as the subject's last sequence; its sequence if accepted.
    async fn publish(&self, after: u64) -> Result<Option<u64>, JournalError> {
        let mut h = HeaderMap::new();
        h.insert(EXPECTED_LAST_SUBJECT, after.to_string().as_str());
        let ack = self
            .js
            .publish_with_headers(self.subject.clone(), h, Bytes::from(self.me.clone()))
            .await
            .map_err(|e| js_err("publishing the lease", e))?;
        match ack.await {
            Ok(a) => Ok(Some(a.sequence)),
            // Another reader's message came first (or is still there): not ours.
            Err(e) if e.to_string().contains("wrong last sequence") => Ok(None),
            Err(e) => Err(js_err("publishing the lease", e)),
        }
    }

    /// Takes the lease if nobody holds it, or if its holder is this reader's own earlier process (same host,
    /// same gRPC address: that process is gone, or this one could not have bound the address); true if this
    /// reader holds it now.
    pub async fn try_take(&mut self) -> Result<bool, JournalError> {
        let after = match self.holder().await? {
            None => 0,
            Some((holder, seq)) if holder == self.me => seq,
            Some(_) => return Ok(false),
        };
        self.held = self.publish(after).await?;
        Ok(self.held.is_some())
    }

    /// Renews the lease this reader holds; false if another reader holds it now.
    pub async fn renew(&mut self) -> Result<bool, JournalError> {
        let Some(seq) = self.held else { return Ok(false) };
        self.held = match self.publish(seq).await? {
            Some(next) => Some(next),
            // Refused: the message expired while the stream could not be written (a leader election after a lost
            // server): take it again if nobody did; or an earlier renewal whose answer was lost went through.
            None => match self.holder().await? {
                None => self.publish(0).await?,
                Some((holder, at)) if holder == self.me => self.publish(at).await?,
                Some(_) => None,
            },
        };
        Ok(self.held.is_some())
    }

    /// Gives the lease up (a reader that stops), so that a standby takes over at once instead of after the
    /// lease time. Only this reader's own lease message is removed.
    pub async fn release(&mut self) -> Result<(), JournalError> {
        let Some(seq) = self.held.take() else { return Ok(()) };
        if self.holder().await?.is_some_and(|(_, at)| at == seq) {
            self.stream.delete_message(seq).await.map_err(|e| js_err("releasing the lease", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::jetstream_store::test_server::Nats;
    use super::Lease;

    /// Polls until the lease message expired (the stream's max age).
    async fn expired(lease: &Lease) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while lease.holder().await.expect("holder").is_some() {
            assert!(Instant::now() < deadline, "the lease message expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_lease_that_expired_unrenewed_is_taken_back_unless_another_reader_took_it() {
        let nats = Nats::start();
        let config = nats.config("lease");
        let ttl = Duration::from_secs(1);
        let mut a = Lease::open(&config, "host/a".into(), ttl).await.expect("lease a");
        let mut b = Lease::open(&config, "host/b".into(), ttl).await.expect("lease b");
        assert!(a.try_take().await.expect("take"), "a free lease is taken");
        assert!(!b.try_take().await.expect("take"), "a held lease is not");
        assert!(a.renew().await.expect("renew"));

        // The holder could not renew for a lease time (a leader election): nobody took it, so it is a's again.
        expired(&a).await;
        assert!(a.renew().await.expect("renew"), "an expired lease nobody took is renewed");
        assert_eq!(a.holder().await.expect("holder").map(|(h, _)| h).as_deref(), Some("host/a"));

        // This time the standby took it first: a's renewal says the lease is lost.
        expired(&a).await;
        assert!(b.try_take().await.expect("take"));
        assert!(!a.renew().await.expect("renew"), "a lease another reader holds is not renewed");
        assert_eq!(a.holder().await.expect("holder").map(|(h, _)| h).as_deref(), Some("host/b"));
    }
}
