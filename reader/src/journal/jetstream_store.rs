//! The replicated store: the journal's records in a NATS JetStream stream (Raft-replicated across the cluster),
//! its metadata and the consumers' acks in two JetStream key-value buckets.
//!
//! Metadata and acks are kept as a key-value stream would (one subject per key, the last message of a subject
//! is its value; `REPLICA_<name>_META`): Debian 12's nats-server 2.9 answers the client's bucket creation in a
//! form the client cannot read, and these few keys need nothing more than that.
//!
//! Offsets: each record is one message of stream `REPLICA_<name>` (header `Replica-Offset`), in offset order, so
//! a record's stream sequence is its offset plus a shift that only grows. The shift grows where fragments of a
//! transaction whose end never came were deleted (a crash or a lost connection in the middle of a large
//! transaction): deleted messages keep their sequences. Such points are rare and kept, sorted, under one
//! metadata key, written before the first record they concern; records never move.
//!
//! Atomicity: a publish is atomic per message, so the resume state rides in the header (`Replica-Resume`) of the
//! message that holds the last record of the last whole transaction of a write, on subject `replica.<name>.resume`
//! (other records go to `replica.<name>.rec`): after a crash the last message carrying that header (found
//! walking back from the stream's last sequence, past a fence and unfinished fragments) says where the reader
//! resumes and which record is the last whole one. A write that adds no such record (only filtered
//! transactions, an XA PREPARE) puts the resume state in the metadata, with its last offset; at open the
//! later of the two wins. Records past the resume state's last offset are fragments of an unfinished
//! transaction: the journal removes them ([`Store::remove_after`]) and the reader reads that transaction again.
//!
//! Exactly once across crashes, and fencing: every publish says which stream sequence must be the last one
//! before it (`Nats-Expected-Last-Sequence`). A reader that crashed after a publish the stream kept finds it at
//! open (it resumes after it); a publish whose answer was lost (a NATS server gone) is checked against what the
//! stream kept (the last message must be this offset with this journaling time) and only the rest is sent
//! again. A reader that becomes the writer (`take_over`, after it got the lease, see `lease`) first publishes a
//! fence message after the stream's last: every later publish of the previous writer expects an earlier
//! sequence and is refused, so a paused writer that wakes up cannot append.
//!
//! Records larger than a NATS message (the server's `max_payload`, 1 MiB by default; fragments are up to 4 MiB)
//! are kept in parts in stream `REPLICA_<name>_PARTS`, published before the record's message, which names them
//! (`Replica-Parts: first sequence, count`). Every record names the parts stream's next sequence when it was
//! written (`Replica-Parts-Low`), so trimming knows which parts nothing refers to any more. Durability is what
//! the stream's replicas give: a publish is acknowledged once a majority of them stored it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::error::JournalError;
use super::store::{Append, Copies, Entry, MetaChange, Space, Store, Stored};

const OFFSET: &str = "Replica-Offset";
const RESUME: &str = "Replica-Resume";
const TIME: &str = "Replica-Time";
const PARTS: &str = "Replica-Parts";
const PARTS_LOW: &str = "Replica-Parts-Low";
const EXPECTED_LAST: &str = "Nats-Expected-Last-Sequence";
/// Metadata key of the resume state written without a record (8 bytes of last offset, then the state).
const RESUME_KEY: &[u8] = b"m/resume";
/// Metadata key of the offset → sequence shifts.
const SHIFTS_KEY: &[u8] = b"m/shifts";
/// Records fetched concurrently by a read.
const READ_AHEAD: usize = 64;
/// How long a write waits for the cluster (a server lost, a leader being elected) before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// How long health and metrics wait for the stream's cluster state.
const COPIES_WAIT: Duration = Duration::from_secs(1);
/// Bytes kept free in a message for its headers.
const HEADER_ROOM: usize = 4096;

/// Where the JetStream journal is and how it is kept.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// NATS servers (`nats://host:port`), any of the cluster.
    pub urls: Vec<String>,
    /// The journal's name (from `MARIA_PRIMARY_NAME`): stream `REPLICA_<name>` and its buckets.
    pub name: String,
    /// Copies of every message (1, 3 or 5; the cluster needs at least that many servers).
    pub replicas: usize,
}

impl JetStreamConfig {
    /// `name` made fit for stream and subject names (letters, digits, `_` and `-`).
    pub fn stream_name(&self) -> String {
        let clean: String =
            self.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        format!("REPLICA_{clean}")
    }

    /// The first tokens of every subject of the journal's streams (`replica.<name>`).
    pub fn subject_prefix(&self) -> String {
        self.stream_name().to_lowercase().replace("replica_", "replica.")
    }
}

/// What [`JetStreamStore::connect`] opens: the context, the records, parts and metadata streams, part size.
type Opened = (jetstream::Context, stream::Stream, stream::Stream, stream::Stream, usize);

struct State {
    /// The stream's last sequence (deleted messages keep theirs).
    last_seq: u64,
    /// First offset → shift (sequence minus offset) from there on.
    shifts: BTreeMap<u64, u64>,
    bytes: u64,
    /// The parts stream's next sequence: no record written from now on refers to a part below it.
    parts_next: u64,
}

impl State {
    fn shift(&self, offset: u64) -> u64 {
        self.shifts.range(..=offset).next_back().map_or(0, |(_, s)| *s)
    }

    fn seq_of(&self, offset: u64) -> u64 {
        offset + self.shift(offset)
    }
}

pub struct JetStreamStore {
    /// The store's own runtime: its calls block, and are made from threads of another runtime.
    rt: Option<tokio::runtime::Runtime>,
    js: jetstream::Context,
    records: stream::Stream,
    parts: stream::Stream,
    meta: stream::Stream,
    stream_name: String,
    subject_meta: String,
    subject_rec: String,
    subject_resume: String,
    subject_part: String,
    subject_fence: String,
    part_bytes: usize,
    /// Copies asked for at creation (reported while the cluster does not answer).
    replicas: u32,
    state: Mutex<State>,
}

fn js_err(what: &str, e: impl std::fmt::Display) -> JournalError {
    JournalError::JetStream(format!("{what}: {e}"))
}

/// Whether the stream refused a publish because another writer appended first.
fn fenced(e: &JournalError) -> bool {
    e.to_string().contains("wrong last sequence")
}

fn another_writer(e: JournalError, kept: u64) -> JournalError {
    JournalError::JetStream(format!(
        "another reader appended to the journal (the stream's last sequence is {kept}): this reader is no longer \
         its writer ({e})"
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, JournalError> {
    if !text.len().is_multiple_of(2) {
        return Err(JournalError::Meta(format!("bad hex {text:?}")));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| JournalError::Meta(format!("bad hex: {e}"))))
        .collect()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

/// The lowest part a record refers to or may refer to: its own first part, else the parts stream's next sequence.
fn header_low(h: &HeaderMap, parts_next: u64) -> String {
    let own = header(h, PARTS).and_then(|p| p.split(',').next()).and_then(|f| f.parse::<u64>().ok());
    own.unwrap_or(parts_next).to_string()
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    header(h, name).and_then(|v| v.parse().ok())
}

impl JetStreamStore {
    /// Connects to the cluster and opens (or creates) the journal's stream and buckets.
    pub fn open(config: &JetStreamConfig) -> Result<Self, JournalError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("jetstream")
            .enable_all()
            .build()
            .map_err(JournalError::Segment)?;
        let c = config.clone();
        let opened = rt.block_on(async move { Self::connect(&c).await });
        let (js, records, parts, meta, part_bytes) = opened?;
        let stream_name = config.stream_name();
        let subject = config.subject_prefix();
        let store = Self {
            rt: Some(rt),
            js,
            records,
            parts,
            meta,
            stream_name,
            subject_meta: format!("{subject}.meta"),
            subject_rec: format!("{subject}.rec"),
            subject_resume: format!("{subject}.resume"),
            subject_part: format!("{subject}.part"),
            subject_fence: format!("{subject}.fence"),
            part_bytes,
            replicas: config.replicas as u32,
            state: Mutex::new(State { last_seq: 0, shifts: BTreeMap::new(), bytes: 0, parts_next: 1 }),
        };
        store.refresh()?;
        Ok(store)
    }

    /// What the stream holds now: its last sequence, the shifts, the bytes, the parts' next sequence.
    fn load(&self) -> Result<State, JournalError> {
        let shifts: Vec<(u64, u64)> = match self.get(Space::Meta, SHIFTS_KEY)? {
            Some(v) => {
                bincode::serde::decode_from_slice(&v, bincode::config::standard())
                    .map_err(|e| JournalError::Meta(format!("shifts: {e}")))?
                    .0
            }
            None => Vec::new(),
        };
        let (info, parts) = (self.info()?, self.parts_info()?);
        Ok(State {
            last_seq: info.last_sequence,
            shifts: shifts.into_iter().collect(),
            bytes: info.bytes + parts.bytes,
            parts_next: parts.last_sequence + 1,
        })
    }

    async fn connect(c: &JetStreamConfig) -> Result<Opened, JournalError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("replica-reader {}", c.name))
            .retry_on_initial_connect()
            .connect(c.urls.as_slice())
            .await
            .map_err(|e| js_err(&format!("connecting to {}", c.urls.join(",")), e))?;
        let js = jetstream::new(client.clone());
        let name = c.stream_name();
        let subject = c.subject_prefix();
        let records = js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{subject}.rec"), format!("{subject}.resume"), format!("{subject}.fence")],
                storage: stream::StorageType::File,
                allow_direct: true,
                num_replicas: c.replicas,
                description: Some(format!("replica-reader journal of {}", c.name)),
                ..Default::default()
            })
            .await
            .map_err(|e| js_err(&format!("creating stream {name}"), e))?;
        let parts = js
            .get_or_create_stream(stream::Config {
                name: format!("{name}_PARTS"),
                subjects: vec![format!("{subject}.part")],
                storage: stream::StorageType::File,
                allow_direct: true,
                num_replicas: c.replicas,
                description: Some(format!("parts of large records of the journal of {}", c.name)),
                ..Default::default()
            })
            .await
            .map_err(|e| js_err(&format!("creating stream {name}_PARTS"), e))?;
        let meta = js
            .get_or_create_stream(stream::Config {
                name: format!("{name}_META"),
                subjects: vec![format!("{subject}.meta.>")],
                storage: stream::StorageType::File,
                num_replicas: c.replicas,
                max_messages_per_subject: 1,
                description: Some(format!("metadata and consumers of the journal of {}", c.name)),
                ..Default::default()
            })
            .await
            .map_err(|e| js_err(&format!("creating stream {name}_META"), e))?;
        let max_payload = client.server_info().max_payload.max(64 << 10);
        Ok((js, records, parts, meta, max_payload.saturating_sub(HEADER_ROOM)))
    }

    /// Runs `f` on the store's runtime and waits for it (from any thread, inside a runtime or not).
    fn block<T: Send + 'static>(&self, f: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let Some(rt) = &self.rt else { panic!("the JetStream store's runtime stopped") };
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        match rx.recv() {
            Ok(v) => v,
            // The runtime is shutting down: the task was dropped.
            Err(_) => panic!("the JetStream store's runtime stopped"),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of the records stream, waiting out a cluster that is electing a leader.
    fn info(&self) -> Result<stream::State, JournalError> {
        self.patiently("reading the stream's state", || self.stream_info(&self.records).map(|i| i.state))
    }

    /// The state of the parts stream, as [`Self::info`].
    fn parts_info(&self) -> Result<stream::State, JournalError> {
        self.patiently("reading the parts stream's state", || self.stream_info(&self.parts).map(|i| i.state))
    }

    /// One request for `stream`'s info.
    fn stream_info(&self, stream: &stream::Stream) -> Result<stream::Info, JournalError> {
        let s = stream.clone();
        self.block(async move {
            let name = s.cached_info().config.name.clone();
            s.get_info().await.map_err(|e| js_err(&format!("stream {name}"), e))
        })
    }

    /// The message at `seq`, None if there is none (deleted, purged or never written).
    fn message(&self, seq: u64) -> Result<Option<jetstream::message::StreamMessage>, JournalError> {
        self.patiently("reading a record", || {
            let s = self.records.clone();
            self.block(async move { get(&s, seq).await })
        })
    }

    /// The subject that holds `key` of `space`.
    fn key_subject(&self, space: Space, key: &[u8]) -> String {
        let space = match space {
            Space::Meta => "m",
            Space::Consumers => "c",
        };
        // Keys are any bytes (consumer names, XA xids); subjects take a safe alphabet.
        format!("{}.{space}.k{}", self.subject_meta, hex(key))
    }

    fn save_shifts(&self, shifts: &BTreeMap<u64, u64>) -> Result<(), JournalError> {
        let list: Vec<(u64, u64)> = shifts.iter().map(|(k, v)| (*k, *v)).collect();
        let v = bincode::serde::encode_to_vec(&list, bincode::config::standard())
            .map_err(|e| JournalError::Meta(e.to_string()))?;
        self.put(Space::Meta, SHIFTS_KEY, &v, true)
    }

    fn apply_meta(&self, meta: &[MetaChange], removals: bool) -> Result<(), JournalError> {
        for (k, v) in meta {
            match (v, removals) {
                (Some(v), false) => self.put(Space::Meta, k, v, true)?,
                (None, true) => {
                    self.remove(Space::Meta, k)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Runs `f` until it succeeds, for up to [`PATIENCE`]: a NATS server lost, a stream leader being elected.
    /// A refusal because another writer appended (fencing) is never retried.
    fn patiently<T>(&self, what: &str, mut f: impl FnMut() -> Result<T, JournalError>) -> Result<T, JournalError> {
        let deadline = Instant::now() + PATIENCE;
        let mut pause = Duration::from_millis(100);
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if fenced(&e) || Instant::now() + pause > deadline => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "JetStream: {what} failed; trying again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Publishes the messages of one append (the first after `start_seq`), each expecting the one before it.
    /// After a failure, what the stream kept is checked (the last message must be ours: this offset, this
    /// journaling time) and only the rest is published again; anything else is another writer's, and refused.
    fn publish_records(
        &self,
        start_seq: u64,
        first_offset: u64,
        journaled_unix_ms: i64,
        pending: Vec<(String, HeaderMap, Bytes)>,
    ) -> Result<(), JournalError> {
        let n = pending.len() as u64;
        let deadline = Instant::now() + PATIENCE;
        let mut pause = Duration::from_millis(100);
        let mut from = 0u64;
        loop {
            let context = self.js.clone();
            let stream_name = self.stream_name.clone();
            let batch: Vec<_> = pending[from as usize..].to_vec();
            let published = self.block(async move {
                let mut acks = Vec::with_capacity(batch.len());
                for (subject, h, payload) in batch {
                    let ack = context
                        .publish_with_headers(subject, h, payload)
                        .await
                        .map_err(|e| js_err(&format!("publishing to {stream_name}"), e))?;
                    acks.push(ack);
                }
                for ack in acks {
                    ack.await
                        .map_err(|e| js_err(&format!("publishing to {stream_name} (refused or not stored)"), e))?;
                }
                Ok::<_, JournalError>(())
            });
            let Err(e) = published else { return Ok(()) };
            // What did the stream keep?
            let kept = match self.info() {
                Ok(info) => info.last_sequence,
                Err(_) if Instant::now() + pause <= deadline => {
                    std::thread::sleep(pause);
                    continue;
                }
                Err(_) => return Err(e),
            };
            if kept < start_seq + from || kept > start_seq + n {
                return Err(another_writer(e, kept));
            }
            if kept > start_seq {
                let ours = self.message(kept)?.is_some_and(|m| {
                    header_u64(&m.headers, OFFSET) == Some(first_offset + (kept - start_seq - 1))
                        && header(&m.headers, TIME).and_then(|t| t.parse::<i64>().ok()) == Some(journaled_unix_ms)
                });
                if !ours {
                    return Err(another_writer(e, kept));
                }
            }
            from = kept - start_seq;
            if from == n {
                return Ok(());
            }
            if Instant::now() + pause > deadline {
                return Err(e);
            }
            tracing::warn!(error = %e, stored = from, of = n, retry_in = ?pause, "JetStream: publishing records failed; publishing the rest again");
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// The offset in a message's header.
    fn offset_of(m: &jetstream::message::StreamMessage) -> Result<u64, JournalError> {
        header_u64(&m.headers, OFFSET)
            .ok_or_else(|| JournalError::Meta(format!("stream message {} has no {OFFSET} header", m.sequence)))
    }
}

async fn get(s: &stream::Stream, seq: u64) -> Result<Option<jetstream::message::StreamMessage>, JournalError> {
    match s.raw_message_builder().sequence(seq).send().await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(js_err(&format!("reading sequence {seq}"), e)),
    }
}

/// The message at `seq` for serving: a direct get (answered by any replica, without the JetStream API's queue,
/// which many reads at once would clog), and the stream leader's answer when a replica has not got it yet.
async fn fetch(s: &stream::Stream, seq: u64) -> Result<Option<jetstream::message::StreamMessage>, JournalError> {
    match s.direct_get(seq).await {
        Ok(m) => Ok(Some(m)),
        Err(_) => get(s, seq).await,
    }
}

/// The record in message `m`: its payload, or its parts put back together.
async fn assemble(parts: &stream::Stream, m: jetstream::message::StreamMessage) -> Result<Vec<u8>, JournalError> {
    let Some(spec) = header(&m.headers, PARTS) else { return Ok(m.payload.to_vec()) };
    let (first, count) = spec
        .split_once(',')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .ok_or_else(|| JournalError::Meta(format!("bad {PARTS} header {spec:?}")))?;
    let mut bytes = Vec::new();
    for seq in first..first + count {
        // A missing part leaves the record short: its checksum then says it is damaged.
        if let Some(p) = fetch(parts, seq).await? {
            bytes.extend_from_slice(&p.payload);
        }
    }
    Ok(bytes)
}

impl Store for JetStreamStore {
    fn kind(&self) -> &'static str {
        "jetstream"
    }

    fn bounds(&self) -> Result<Option<(u64, u64)>, JournalError> {
        let info = self.info()?;
        if info.messages == 0 {
            return Ok(None);
        }
        let Some(first) = self.message(info.first_sequence)? else {
            return Err(JournalError::Meta(format!("the stream's first message {} is gone", info.first_sequence)));
        };
        let first = Self::offset_of(&first)?;
        let st = self.state();
        let last = info.last_sequence - st.shift(u64::MAX);
        Ok(Some((first, last.max(first))))
    }

    fn resume(&self) -> Result<Option<Vec<u8>>, JournalError> {
        // The last message with a resume header: back from the stream's last sequence, past the fence and the
        // fragments of an unfinished transaction (few: each holds 4 MiB of rows).
        let info = self.info()?;
        let mut seq = info.last_sequence;
        let mut from_record = None;
        while seq >= info.first_sequence.max(1) {
            if let Some(m) = self.message(seq)? {
                if let Some(text) = header(&m.headers, RESUME) {
                    from_record = Some((Self::offset_of(&m)?, unhex(text)?));
                    break;
                }
            }
            seq -= 1;
        }
        let from_meta = match self.get(Space::Meta, RESUME_KEY)? {
            Some(v) if v.len() >= 8 => {
                let at = u64::from_be_bytes(v[..8].try_into().map_err(|_| JournalError::Meta("resume".into()))?);
                Some((at, v[8..].to_vec()))
            }
            _ => None,
        };
        // The bucket's is written only after its last offset is durable: at the same offset it is the later one.
        Ok(match (from_record, from_meta) {
            (Some(r), Some(m)) => Some(if m.0 >= r.0 { m.1 } else { r.1 }),
            (r, m) => r.or(m).map(|(_, v)| v),
        })
    }

    fn append(&self, a: Append<'_>) -> Result<(), JournalError> {
        self.apply_meta(&a.meta, false)?;
        let mut st = self.state();
        let mut pending = Vec::with_capacity(a.records.len());
        for (i, record) in a.records.iter().enumerate() {
            let offset = a.first + i as u64;
            let seq = st.seq_of(offset);
            if seq != st.last_seq + 1 {
                return Err(JournalError::Meta(format!(
                    "offset {offset} would be stream sequence {seq}, but the stream's last is {}",
                    st.last_seq
                )));
            }
            let mut h = HeaderMap::new();
            h.insert(OFFSET, offset.to_string().as_str());
            h.insert(TIME, a.journaled_unix_ms.to_string().as_str());
            h.insert(EXPECTED_LAST, st.last_seq.to_string().as_str());
            let resume_here = a.resume.as_ref().filter(|(at, _)| *at == offset);
            if let Some((_, resume)) = resume_here {
                h.insert(RESUME, hex(resume).as_str());
            }
            let subject = if resume_here.is_some() { &self.subject_resume } else { &self.subject_rec };
            let payload = if record.len() > self.part_bytes {
                // The parts first (each acknowledged), then the record's message that names them.
                let subject = self.subject_part.clone();
                let chunks: Vec<Bytes> = record.chunks(self.part_bytes).map(Bytes::copy_from_slice).collect();
                let context = self.js.clone();
                // Parts are published again whole after a failure: the ones a failed attempt left are never
                // referred to, and go with a later trim.
                let (first, count) = self.patiently("publishing a large record's parts", || {
                    let (context, subject, chunks) = (context.clone(), subject.clone(), chunks.clone());
                    self.block(async move {
                        let mut first = None;
                        let count = chunks.len() as u64;
                        for chunk in chunks {
                            let ack = context
                                .publish(subject.clone(), chunk)
                                .await
                                .map_err(|e| js_err("publishing a part", e))?
                                .await
                                .map_err(|e| js_err("publishing a part", e))?;
                            first.get_or_insert(ack.sequence);
                        }
                        Ok::<_, JournalError>((first.unwrap_or(0), count))
                    })
                })?;
                h.insert(PARTS, format!("{first},{count}").as_str());
                st.parts_next = st.parts_next.max(first + count);
                Bytes::new()
            } else {
                Bytes::copy_from_slice(record)
            };
            // Parts a crash left without their record are below this mark too, and go with the next trim.
            h.insert(PARTS_LOW, header_low(&h, st.parts_next).as_str());
            pending.push((subject.clone(), h, payload));
            st.last_seq += 1;
            st.bytes += record.len() as u64;
        }
        let start_seq = st.last_seq - pending.len() as u64;
        if let Err(e) = self.publish_records(start_seq, a.first, a.journaled_unix_ms, pending) {
            // What the stream holds now is read again at the next open.
            if let Ok(info) = self.info() {
                st.last_seq = info.last_sequence;
            }
            return Err(e);
        }
        if let Some((at, resume)) = a.resume.filter(|(at, _)| *at < a.first) {
            drop(st);
            let mut v = at.to_be_bytes().to_vec();
            v.extend_from_slice(&resume);
            self.put(Space::Meta, RESUME_KEY, &v, true)?;
        } else {
            drop(st);
        }
        self.apply_meta(&a.meta, true)
    }

    fn read(&self, from: u64, to: u64, limit: usize, max_bytes: usize) -> Result<Vec<Stored>, JournalError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut next = from;
        while next <= to && out.len() < limit {
            let n = ((to - next + 1) as usize).min(limit - out.len()).min(READ_AHEAD);
            let seqs: Vec<(u64, u64)> = {
                let st = self.state();
                (next..next + n as u64).map(|o| (o, st.seq_of(o))).collect()
            };
            let records = self.records.clone();
            let parts = self.parts.clone();
            let name = self.stream_name.clone();
            let got: Vec<Option<Stored>> = self.block(async move {
                futures_util::stream::iter(seqs.into_iter().map(|(offset, seq)| {
                    let (records, parts, name) = (records.clone(), parts.clone(), name.clone());
                    async move {
                        let Some(m) = fetch(&records, seq).await? else { return Ok(None) };
                        let journaled_unix_ms = header(&m.headers, TIME).and_then(|t| t.parse().ok()).unwrap_or(0);
                        let bytes = assemble(&parts, m).await?;
                        Ok::<_, JournalError>(Some(Stored {
                            offset,
                            bytes,
                            journaled_unix_ms,
                            place: format!("stream {name}, sequence {seq}"),
                        }))
                    }
                }))
                .buffered(READ_AHEAD)
                .try_collect()
                .await
            })?;
            for stored in got {
                let Some(stored) = stored else { return Ok(out) };
                if !out.is_empty() && bytes + stored.bytes.len() > max_bytes {
                    return Ok(out);
                }
                bytes += stored.bytes.len();
                out.push(stored);
            }
            next += n as u64;
        }
        Ok(out)
    }

    fn journaled_unix_ms(&self, offset: u64) -> Option<i64> {
        let seq = self.state().seq_of(offset);
        let m = self.message(seq).ok()??;
        header(&m.headers, TIME)?.parse().ok()
    }

    fn remove_after(&self, offset: u64, resume: Option<Vec<u8>>, meta: Vec<MetaChange>) -> Result<u64, JournalError> {
        let (from_seq, last_seq, shifts) = {
            let st = self.state();
            // The sequence of `offset`'s record (or where offset 0 would be).
            let at = st.seq_of(offset);
            (at + 1, st.last_seq, st.shifts.clone())
        };
        let mut removed = 0;
        if last_seq >= from_seq {
            // The next record goes after the stream's last sequence: say so before deleting anything.
            let mut shifts = shifts;
            shifts.retain(|k, _| *k <= offset);
            shifts.insert(offset + 1, last_seq - offset);
            self.save_shifts(&shifts)?;
            let s = self.records.clone();
            removed = self.block(async move {
                let mut n = 0u64;
                for seq in from_seq..=last_seq {
                    match s.delete_message(seq).await {
                        Ok(true) => n += 1,
                        Ok(false) => {}
                        // Deleted already (by an earlier take-over that stopped halfway).
                        Err(e) if e.to_string().contains("not found") || e.to_string().contains("no message found") => {
                        }
                        Err(e) => return Err(js_err(&format!("deleting sequence {seq}"), e)),
                    }
                }
                Ok::<_, JournalError>(n)
            })?;
            self.state().shifts = shifts;
        }
        if let Some(resume) = resume {
            let mut v = offset.to_be_bytes().to_vec();
            v.extend_from_slice(&resume);
            self.put(Space::Meta, RESUME_KEY, &v, true)?;
        }
        self.apply_meta(&meta, false)?;
        self.apply_meta(&meta, true)?;
        if removed > 0 {
            let bytes = self.info()?.bytes + self.parts_info()?.bytes;
            self.state().bytes = bytes;
        }
        Ok(removed)
    }

    fn trim(&self, through: u64, cutoff_unix_ms: i64, max: usize) -> Result<usize, JournalError> {
        let Some((first, _)) = self.bounds()? else { return Ok(0) };
        let last = through.min(first + max as u64 - 1);
        if last < first || self.journaled_unix_ms(first).is_none_or(|t| t > cutoff_unix_ms) {
            return Ok(0);
        }
        // The last record old enough: journaling times grow with offsets.
        let (mut lo, mut hi) = (first, last);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.journaled_unix_ms(mid).is_some_and(|t| t <= cutoff_unix_ms) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let keep_seq = {
            let st = self.state();
            st.seq_of(lo + 1).min(st.last_seq + 1)
        };
        let s = self.records.clone();
        self.block(async move { s.purge().sequence(keep_seq).await.map_err(|e| js_err("trimming the stream", e)) })?;
        // Parts below the first kept record's low mark belong to trimmed records only.
        let parts_low = match self.message(keep_seq)? {
            Some(m) => header_u64(&m.headers, PARTS_LOW),
            None => Some(self.parts_info()?.last_sequence + 1),
        };
        if let Some(low) = parts_low {
            let p = self.parts.clone();
            self.block(async move { p.purge().sequence(low).await.map_err(|e| js_err("trimming parts", e)) })?;
        }
        let bytes = self.info()?.bytes + self.parts_info()?.bytes;
        let mut st = self.state();
        st.bytes = bytes;
        // Shifts before the first record are of no use any more.
        if let Some(keep) = st.shifts.range(..=lo + 1).next_back().map(|(k, _)| *k) {
            st.shifts.retain(|k, _| *k >= keep);
        }
        Ok((lo - first + 1) as usize)
    }

    fn bytes(&self) -> u64 {
        self.state().bytes
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, JournalError> {
        self.patiently("reading the journal's metadata", || {
            let s = self.meta.clone();
            let subject = self.key_subject(space, key);
            self.block(async move {
                match s.raw_message_builder().last_by_subject(subject).send().await {
                    Ok(m) => Ok(Some(m.payload.to_vec())),
                    Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
                    Err(e) => Err(js_err("reading the journal's metadata", e)),
                }
            })
        })
    }

    fn put(&self, space: Space, key: &[u8], value: &[u8], _durable: bool) -> Result<(), JournalError> {
        // Acknowledged once the stream's replicas stored it; the same value again if that is not known.
        let (subject, value) = (self.key_subject(space, key), Bytes::copy_from_slice(value));
        self.patiently("writing the journal's metadata", || {
            let js = self.js.clone();
            let (subject, value) = (subject.clone(), value.clone());
            self.block(async move {
                let ack = js.publish(subject, value).await.map_err(|e| js_err("writing the journal's metadata", e))?;
                ack.await.map(|_| ()).map_err(|e| js_err("writing the journal's metadata", e))
            })
        })
    }

    fn remove(&self, space: Space, key: &[u8]) -> Result<bool, JournalError> {
        let subject = self.key_subject(space, key);
        self.patiently("removing from the journal's metadata", || {
            let (s, subject) = (self.meta.clone(), subject.clone());
            self.block(async move {
                s.purge()
                    .filter(subject)
                    .await
                    .map(|r| r.purged > 0)
                    .map_err(|e| js_err("removing from the journal's metadata", e))
            })
        })
    }

    fn scan(&self, space: Space, prefix: &[u8]) -> Result<Vec<Entry>, JournalError> {
        let filter = format!("{}.>", self.key_subject(space, b"").trim_end_matches(".k"));
        let subjects: Vec<String> = self.patiently("listing the journal's metadata", || {
            let (s, filter) = (self.meta.clone(), filter.clone());
            self.block(async move {
                let info =
                    s.info_with_subjects(filter).await.map_err(|e| js_err("listing the journal's metadata", e))?;
                info.try_collect::<Vec<(String, usize)>>()
                    .await
                    .map(|v| v.into_iter().map(|(k, _)| k).collect())
                    .map_err(|e| js_err("listing the journal's metadata", e))
            })
        })?;
        let mut out = Vec::new();
        for subject in subjects {
            let Some(hexkey) = subject.rsplit('.').next().and_then(|k| k.strip_prefix('k')) else { continue };
            let raw = unhex(hexkey)?;
            if raw.starts_with(prefix) {
                if let Some(v) = self.get(space, &raw)? {
                    out.push((raw, v));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn overwrite(&self, offset: u64, _bytes: &[u8]) -> Result<(), JournalError> {
        Err(JournalError::Meta(format!(
            "offset {offset}: records in a JetStream stream cannot be rewritten; the stream's replicas keep \
             their own copies (remove the damaged server's copy and let the stream re-replicate)"
        )))
    }

    fn tail_from(&self) -> Result<Option<u64>, JournalError> {
        // A message is stored whole or not at all.
        Ok(None)
    }

    fn flush(&self) -> Result<(), JournalError> {
        Ok(())
    }

    fn refresh(&self) -> Result<(), JournalError> {
        let mut fresh = self.load()?;
        let mut st = self.state();
        // Sequences only grow: an answer read before a publish this process made is not newer than its own view.
        fresh.last_seq = fresh.last_seq.max(st.last_seq);
        fresh.parts_next = fresh.parts_next.max(st.parts_next);
        *st = fresh;
        Ok(())
    }

    fn copies(&self) -> Copies {
        // Asked by health and metrics: a cluster without a leader must not hold them up.
        let s = self.records.clone();
        let info = match self.block(async move { tokio::time::timeout(COPIES_WAIT, s.get_info()).await }) {
            Ok(Ok(info)) => info,
            _ => return Copies { configured: self.replicas, current: 0, leader: String::new() },
        };
        let configured = info.config.num_replicas as u32;
        let Some(cluster) = info.cluster else {
            // A server without clustering: one copy.
            return Copies { configured, current: 1, leader: String::new() };
        };
        let leader = cluster.leader.unwrap_or_default();
        let followers = cluster.replicas.iter().filter(|p| p.current && !p.offline).count() as u32;
        Copies { configured, current: u32::from(!leader.is_empty()) + followers, leader }
    }

    fn take_over(&self) -> Result<(), JournalError> {
        // A fence message after the stream's last: every append of the previous writer expects an earlier last
        // sequence, so the stream refuses them all from now on. It holds no record (reads never ask for it).
        self.refresh()?;
        let last = self.state().last_seq;
        let mut h = HeaderMap::new();
        h.insert(EXPECTED_LAST, last.to_string().as_str());
        let js = self.js.clone();
        let subject = self.subject_fence.clone();
        let seq = self.block(async move {
            let ack = js.publish_with_headers(subject, h, Bytes::new()).await.map_err(|e| js_err("fencing", e))?;
            ack.await.map(|a| a.sequence).map_err(|e| js_err("fencing (another writer appended meanwhile)", e))
        })?;
        self.state().last_seq = seq;
        Ok(())
    }
}

impl Drop for JetStreamStore {
    fn drop(&mut self) {
        // Dropped maybe on a thread of another runtime, where blocking is not allowed: stop without waiting.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A nats-server of a test's own (JetStream on, a free loopback port, a temporary directory), stopped on drop.
#[cfg(test)]
pub(crate) mod test_server {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::JetStreamConfig;

    pub struct Nats {
        child: Child,
        pub port: u16,
        _dir: tempfile::TempDir,
    }

    impl Nats {
        pub fn start() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
            let child = Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server (Debian package nats-server)");
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "nats-server did not start on port {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Self { child, port, _dir: dir }
        }

        pub fn config(&self, name: &str) -> JetStreamConfig {
            JetStreamConfig { urls: vec![format!("nats://127.0.0.1:{}", self.port)], name: name.into(), replicas: 1 }
        }
    }

    impl Drop for Nats {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(store: &JetStreamStore, first: u64, records: &[Vec<u8>], resume_at: u64) -> Result<(), JournalError> {
        store.append(Append {
            first,
            records,
            journaled_unix_ms: 1,
            resume: Some((resume_at, format!("resume {resume_at}").into_bytes())),
            meta: Vec::new(),
        })
    }

    #[test]
    fn a_record_larger_than_a_message_is_kept_in_parts_and_read_back_whole() {
        let nats = test_server::Nats::start();
        let store = JetStreamStore::open(&nats.config("parts")).expect("open");
        let big: Vec<u8> = (0..3 * store.part_bytes + 17).map(|i| (i % 251) as u8).collect();
        append(&store, 1, &[b"small".to_vec(), big.clone(), b"after".to_vec()], 3).expect("append");
        let read = store.read(1, 3, 10, usize::MAX).expect("read");
        assert_eq!(read.iter().map(|r| r.bytes.len()).collect::<Vec<_>>(), [5, big.len(), 5]);
        assert_eq!(read[1].bytes, big);
        assert_eq!(store.resume().expect("resume"), Some(b"resume 3".to_vec()));
        assert_eq!(store.parts_info().expect("parts").messages, 4);
        // Trimmed through the large record: its parts go with it.
        assert_eq!(store.trim(2, i64::MAX, 100).expect("trim"), 2);
        assert_eq!(store.parts_info().expect("parts").messages, 0);
        assert_eq!(store.read(3, 3, 1, usize::MAX).expect("read")[0].bytes, b"after");
    }

    #[test]
    fn a_second_writer_with_a_stale_view_of_the_stream_cannot_append() {
        let nats = test_server::Nats::start();
        let config = nats.config("fenced");
        let active = JetStreamStore::open(&config).expect("open");
        let stale = JetStreamStore::open(&config).expect("open a second time");
        append(&active, 1, &[b"one".to_vec(), b"two".to_vec()], 2).expect("the active writer appends");
        let refused = append(&stale, 1, &[b"other".to_vec()], 1).expect_err("the stale writer is refused");
        assert!(refused.to_string().contains("publishing"), "{refused}");
        let held = active.read(1, 10, 10, usize::MAX).expect("read");
        assert_eq!(held.iter().map(|r| r.bytes.clone()).collect::<Vec<_>>(), [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(active.resume().expect("resume"), Some(b"resume 2".to_vec()));
    }

    #[test]
    fn a_reader_that_takes_over_fences_off_the_previous_writer() {
        let nats = test_server::Nats::start();
        let config = nats.config("taken");
        let old = JetStreamStore::open(&config).expect("open");
        append(&old, 1, &[b"one".to_vec()], 1).expect("the first writer appends");
        let new = JetStreamStore::open(&config).expect("open a second time");
        new.take_over().expect("take over");
        let refused = append(&old, 2, &[b"late".to_vec()], 2).expect_err("the previous writer is fenced off");
        assert!(refused.to_string().contains("another reader appended"), "{refused}");
        // The new writer's next record goes after the fence, at the next offset.
        new.remove_after(1, None, Vec::new()).expect("settle the shift");
        append(&new, 2, &[b"two".to_vec()], 2).expect("the new writer appends");
        let held = new.read(1, 2, 10, usize::MAX).expect("read");
        assert_eq!(held.iter().map(|r| r.bytes.clone()).collect::<Vec<_>>(), [b"one".to_vec(), b"two".to_vec()]);
    }

    /// Appends per second on one local server (a measurement, not a check: `cargo test --release -- --ignored`).
    #[test]
    #[ignore]
    fn append_rate() {
        let nats = test_server::Nats::start();
        let store = JetStreamStore::open(&nats.config("rate")).expect("open");
        let record = vec![7u8; 300];
        let t = std::time::Instant::now();
        let (batches, per) = (40u64, 500u64);
        for b in 0..batches {
            let records = vec![record.clone(); per as usize];
            append(&store, b * per + 1, &records, (b + 1) * per).expect("append");
        }
        let n = batches * per;
        eprintln!("{n} records in {:?}: {:.0}/s", t.elapsed(), n as f64 / t.elapsed().as_secs_f64());
    }
}
