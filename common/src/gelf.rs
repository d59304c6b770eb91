//! GELF 1.1 for Graylog: each log event becomes one JSON object (with `timestamp` and a syslog `level`), sent by a
//! task behind a bounded queue over UDP (one datagram, GELF-chunked above 8 KiB) or TCP (NUL-terminated).
//!
//! Written here rather than taken from tracing-gelf 0.9, which ends every UDP datagram with the TCP framing's NUL
//! (strict JSON parsers such as Logstash's refuse it) and sends no `timestamp`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Number, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::GelfProtocol;

/// Messages waiting for Graylog; beyond this, new ones are dropped (an outage must not hold replication back).
const QUEUE: usize = 10_000;
/// Largest UDP datagram Graylog reads unchunked, and the size of each chunk (header included).
const DATAGRAM: usize = 8192;
const CHUNK_HEADER: usize = 12;
const MAX_CHUNKS: usize = 128;

/// The tracing layer: formats events and queues them for the delivery task.
pub struct GelfLayer {
    base: Map<String, Value>,
    queue: mpsc::Sender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

/// Where and how to deliver.
pub struct GelfTarget {
    pub endpoint: String,
    pub protocol: GelfProtocol,
    /// Wait before reconnecting after a failure.
    pub pause: Duration,
}

impl GelfLayer {
    /// The layer, and its delivery task spawned on the current tokio runtime. `fields` are added to every message
    /// (names without the leading underscore).
    pub fn spawn(host: &str, fields: &[(&str, &str)], target: GelfTarget) -> Self {
        let mut base = Map::new();
        base.insert("version".into(), "1.1".into());
        base.insert("host".into(), host.into());
        for (name, value) in fields {
            base.insert(additional(name), (*value).into());
        }
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(rx, target));
        GelfLayer { base, queue, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// The GELF message of one event, as JSON bytes.
    fn message<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>) -> Vec<u8>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let mut object = self.base.clone();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    object.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut visitor = Fields { object: &mut object, message: None };
        event.record(&mut visitor);
        let meta = event.metadata();
        let short = visitor.message.take().unwrap_or_else(|| meta.name().to_owned());
        object.insert("short_message".into(), short.into());
        object.insert("timestamp".into(), timestamp());
        object.insert("level".into(), syslog_level(*meta.level()).into());
        object.insert("_target".into(), meta.target().into());
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            object.insert("_gelf_dropped_before".into(), dropped.into());
        }
        serde_json::to_vec(&Value::Object(object)).unwrap_or_default()
    }
}

/// Seconds since the epoch with microseconds, as GELF wants (a number, not a string).
fn timestamp() -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = now.as_secs() as f64 + f64::from(now.subsec_micros()) / 1e6;
    Number::from_f64(seconds).map(Value::Number).unwrap_or(Value::Null)
}

/// Syslog severities: error 3, warning 4, informational 6, debug 7 (trace too).
fn syslog_level(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// A GELF additional field name: `_` + the field's name; `_id` is reserved by Graylog.
fn additional(name: &str) -> String {
    if name == "id" {
        "_id_".to_owned()
    } else {
        format!("_{name}")
    }
}

/// Fields recorded on a span, added to the messages of events inside it.
struct SpanFields(Map<String, Value>);

struct Fields<'a> {
    object: &'a mut Map<String, Value>,
    message: Option<String>,
}

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.object.insert(additional(field.name()), value);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = Number::from_f64(value).map(Value::Number).unwrap_or_else(|| value.to_string().into());
        self.put(field, v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        // GELF values are strings or numbers.
        self.put(field, value.to_string().into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // Our log lines pass errors with their causes already (`error = %error_chain(&e)`).
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

impl<S> Layer<S> for GelfLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Map::new();
        attrs.record(&mut Fields { object: &mut fields, message: None });
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            values.record(&mut Fields { object: fields, message: None });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let message = self.message(event, &ctx);
        if self.queue.try_send(message).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Delivers queued messages until every sender is gone, reconnecting after `pause` on failures.
async fn deliver(mut rx: mpsc::Receiver<Vec<u8>>, target: GelfTarget) {
    loop {
        let delivered = match target.protocol {
            GelfProtocol::Udp => deliver_udp(&mut rx, &target.endpoint).await,
            GelfProtocol::Tcp => deliver_tcp(&mut rx, &target.endpoint).await,
        };
        if delivered.is_ok() {
            return; // the queue closed
        }
        tokio::time::sleep(target.pause).await;
    }
}

async fn deliver_udp(rx: &mut mpsc::Receiver<Vec<u8>>, endpoint: &str) -> std::io::Result<()> {
    let addr = resolve(endpoint).await?;
    let local = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    let mut sequence = 0u64;
    while let Some(message) = rx.recv().await {
        sequence += 1;
        for datagram in datagrams(&message, message_id(sequence)) {
            // A refused datagram (nobody listening yet) is lost like any UDP datagram; keep the socket.
            let _ = socket.send(&datagram).await;
        }
    }
    Ok(())
}

async fn deliver_tcp(rx: &mut mpsc::Receiver<Vec<u8>>, endpoint: &str) -> std::io::Result<()> {
    let addr = resolve(endpoint).await?;
    let mut stream = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting to Graylog timed out"))??;
    while let Some(mut message) = rx.recv().await {
        message.push(0);
        stream.write_all(&message).await?;
    }
    Ok(())
}

async fn resolve(endpoint: &str) -> std::io::Result<std::net::SocketAddr> {
    tokio::net::lookup_host(endpoint)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{endpoint} has no address")))
}

/// A message id unique enough for Graylog to reassemble chunks: this process's start time mixed with a sequence.
fn message_id(sequence: u64) -> [u8; 8] {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
    });
    base.wrapping_add(sequence).to_be_bytes()
}

/// One datagram for a message up to 8 KiB; GELF chunks above (magic 0x1e 0x0f, id, sequence number, count);
/// nothing for a message too long for 128 chunks (about 1 MiB).
fn datagrams(message: &[u8], id: [u8; 8]) -> Vec<Vec<u8>> {
    if message.len() <= DATAGRAM {
        return vec![message.to_vec()];
    }
    let body = DATAGRAM - CHUNK_HEADER;
    let count = message.len().div_ceil(body);
    if count > MAX_CHUNKS {
        return Vec::new();
    }
    message
        .chunks(body)
        .enumerate()
        .map(|(i, part)| {
            let mut d = Vec::with_capacity(CHUNK_HEADER + part.len());
            d.extend_from_slice(&[0x1e, 0x0f]);
            d.extend_from_slice(&id);
            d.push(i as u8);
            d.push(count as u8);
            d.extend_from_slice(part);
            d
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_messages_are_one_plain_datagram_and_large_ones_are_chunked_in_order() {
        let small = br#"{"a":1}"#;
        assert_eq!(datagrams(small, [7; 8]), vec![small.to_vec()]);
        let large = vec![b'x'; 20_000];
        let parts = datagrams(&large, [7; 8]);
        assert_eq!(parts.len(), 3);
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(&p[..2], &[0x1e, 0x0f]);
            assert_eq!(&p[2..10], &[7; 8]);
            assert_eq!((p[10], p[11]), (i as u8, 3));
            assert!(p.len() <= DATAGRAM);
        }
        let joined: Vec<u8> = parts.iter().flat_map(|p| p[CHUNK_HEADER..].to_vec()).collect();
        assert_eq!(joined, large);
        assert!(datagrams(&vec![0; DATAGRAM * 200], [0; 8]).is_empty(), "beyond 128 chunks: dropped");
    }

    #[test]
    fn levels_are_syslog_severities_and_id_is_not_reserved_name() {
        assert_eq!(syslog_level(Level::INFO), 6);
        assert_eq!(syslog_level(Level::ERROR), 3);
        assert_eq!(additional("id"), "_id_");
        assert_eq!(additional("offset"), "_offset");
    }
}
