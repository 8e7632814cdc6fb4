//! `neulbi events export|import`: the whole log as NDJSON, one recorded event per line, in
//! log order. Both work on the backend directly (below the encryption layer): personal
//! fields leave sealed (an export is no way around erasure) and come back sealed. Importing
//! into an empty store reproduces the same log — event ids, versions, positions,
//! timestamps — so export → import → export is byte-exact. An import file carrying a plain
//! personal field is refused: it would bypass encryption. `neulbi events copy` moves a log
//! from one backend to another through the same append path as import, then verifies a
//! count and a checksum per stream.

use crate::store::{EventData, ExpectedVersion, Positions, RecordedEvent, SharedStore, StoreError};
use futures::StreamExt;
use neulbi_domain::StreamName;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use thiserror::Error;

/// Events read from the source log per page.
const PAGE: usize = 4096;

/// Why an import stopped. Nothing is imported when the checks of the first pass fail.
#[derive(Debug, Error)]
pub enum ImportError {
    /// A line is not a recorded event.
    #[error("line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// The file would overwrite or extend a stream that already exists.
    #[error("stream {0} already exists; import never overwrites existing streams")]
    StreamExists(String),
    /// Versions of a stream are not 0, 1, 2, ... in file order.
    #[error("line {line}: stream {stream} jumps to version {version}")]
    Gap {
        /// 1-based line number.
        line: usize,
        /// The stream.
        stream: String,
        /// The unexpected version.
        version: u64,
    },
    /// A personal field in plain text: importing it would store it unencrypted.
    #[error(
        "line {0}: a personal field is not sealed; import only takes files written by `events export`"
    )]
    Unsealed(usize),
    /// Reading the file failed.
    #[error("reading the import file: {0}")]
    Io(#[from] std::io::Error),
    /// The store refused an append.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes every event from position 0 as NDJSON; returns how many.
pub async fn export(
    raw: &SharedStore,
    out: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> Result<u64, anyhow::Error> {
    let mut n = 0u64;
    for_each_page(raw, async |page| {
        for e in &page {
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(b"\n")?;
        }
        n += page.len() as u64;
        progress(n);
        Ok::<_, anyhow::Error>(())
    })
    .await?;
    out.flush()?;
    Ok(n)
}

fn parse(line: &str, number: usize) -> Result<RecordedEvent, ImportError> {
    serde_json::from_str(line).map_err(|e| ImportError::BadLine {
        line: number,
        reason: e.to_string(),
    })
}

/// Checks a whole file before anything is written: every line parses, every stream's
/// versions run 0, 1, 2, ... and no stream exists in the target yet.
pub async fn check(store: &SharedStore, input: impl BufRead) -> Result<u64, ImportError> {
    let mut next: HashMap<StreamName, u64> = HashMap::new();
    let mut n = 0u64;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let e = parse(&line, i + 1)?;
        let mut plain = std::collections::BTreeSet::new();
        crate::privacy::cipher::owners(&e.data, crate::privacy::cipher::Fields::Plain, &mut plain)
            .map_err(|err| ImportError::BadLine {
                line: i + 1,
                reason: err.to_string(),
            })?;
        if !plain.is_empty() {
            return Err(ImportError::Unsealed(i + 1));
        }
        let expected = next.entry(e.stream).or_insert(0);
        if e.version != *expected {
            return Err(ImportError::Gap {
                line: i + 1,
                stream: e.stream.to_string(),
                version: e.version,
            });
        }
        *expected += 1;
        n += 1;
    }
    let streams: HashSet<StreamName> = next.into_keys().collect();
    for s in streams {
        let existing = store
            .read_stream(&s, 0, crate::store::Direction::Forward, 1)
            .await?;
        if !existing.is_empty() {
            return Err(ImportError::StreamExists(s.to_string()));
        }
    }
    Ok(n)
}

/// Appends every line, in order, each event expecting its stream's previous version, with
/// up to 256 appends in flight (see [`append_in_order`]). `store` must be the backend
/// without the encryption layer. Run [`check`] first.
pub async fn import(
    store: &SharedStore,
    input: impl BufRead,
    progress: impl FnMut(u64),
) -> Result<u64, ImportError> {
    let mut lines = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if !line.trim().is_empty() {
            lines.push((i + 1, line));
        }
    }
    let events = lines.into_iter().map(|(number, line)| parse(&line, number));
    append_in_order(store, events, in_flight(store), progress).await
}

/// How many appends may be queued at once without letting a later one commit first: a
/// group-committing backend queues each append on its first poll, in order, so 256; a
/// backend where each append is its own round trip (KurrentDB) takes them one at a time.
fn in_flight(store: &SharedStore) -> usize {
    match store.positions() {
        Positions::GapFree => 256,
        Positions::Ordered => 1,
    }
}

/// Appends recorded events in the order given, each expecting its stream's previous
/// version and keeping its id, type, metadata and commit time, with up to `in_flight`
/// appends queued at once. With a group-committing backend each append is queued on its
/// first poll and polls happen in order, so positions come out in the order given (no
/// awaits before queueing). Shared by `events import` and `events copy`.
async fn append_in_order<E: From<StoreError>>(
    store: &SharedStore,
    events: impl Iterator<Item = Result<RecordedEvent, E>>,
    in_flight: usize,
    mut progress: impl FnMut(u64),
) -> Result<u64, E> {
    // tokio's cooperative budget can make a ready channel send return Pending once a task
    // has done enough work, which would let a later append overtake an earlier one. The
    // loop opts out of it, so every append is queued on its first poll, in order.
    tokio::task::unconstrained(async {
        let mut appends = futures::stream::iter(events.map(|e| {
            let store = store.clone();
            async move {
                let e = e?;
                let expected = match e.version {
                    0 => ExpectedVersion::NoStream,
                    v => ExpectedVersion::Exact(v - 1),
                };
                let data = EventData {
                    event_id: e.event_id,
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    data: e.data,
                    metadata: e.metadata,
                    recorded_at: Some(e.recorded_at),
                };
                store.append(&e.stream, expected, vec![data]).await?;
                Ok::<(), E>(())
            }
        }))
        .buffered(in_flight.max(1));
        let mut n = 0u64;
        while let Some(result) = appends.next().await {
            result?;
            n += 1;
            if n.is_multiple_of(1000) {
                progress(n);
            }
        }
        progress(n);
        Ok(n)
    })
    .await
}

/// Why `events copy` stopped or found the copy wrong.
#[derive(Debug, Error)]
pub enum CopyError {
    /// The target already holds events: a copy only fills an empty log.
    #[error(
        "the target log is not empty (its newest event is at position {head}); \
         events copy only writes into an empty log"
    )]
    TargetNotEmpty {
        /// The target's head position.
        head: u64,
    },
    /// After copying, a stream's events in the target differ from the source's.
    #[error(
        "verification failed for stream {stream}: source has {source_events} events \
         (sha256 {source_sha256}), target has {target_events} (sha256 {target_sha256})"
    )]
    Mismatch {
        /// The stream (or `<none>` when only one side has it).
        stream: String,
        /// Events of the stream in the source.
        source_events: u64,
        /// Digest of the stream's events in the source.
        source_sha256: String,
        /// Events of the stream in the target.
        target_events: u64,
        /// Digest of the stream's events in the target.
        target_sha256: String,
    },
    /// Reading the source or appending to the target failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An event could not be serialized for the checksum.
    #[error("checksum of an event: {0}")]
    Checksum(#[from] serde_json::Error),
}

/// How far a copy has come, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyProgress {
    /// `n` events appended to the target so far.
    Copied(u64),
    /// `n` events of the target re-read and checked so far.
    Verified(u64),
}

/// What a finished, verified copy moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Events copied (and verified).
    pub events: u64,
    /// Streams copied, each with the same event count and checksum on both sides.
    pub streams: u64,
}

/// Hands the whole log to `each`, a page at a time, in log order.
async fn for_each_page<E: From<StoreError>>(
    store: &SharedStore,
    mut each: impl AsyncFnMut(Vec<RecordedEvent>) -> Result<(), E>,
) -> Result<(), E> {
    let mut from = 0;
    loop {
        let page = store.read_all(from, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        from = last.position + 1;
        each(page).await?;
    }
}

/// Per-stream event count and SHA-256 over each event's canonical JSON without its global
/// position (positions are the backend's to assign: KurrentDB's are not 0, 1, 2, ...).
#[derive(Default)]
struct Digests(HashMap<StreamName, (u64, Sha256)>);

impl Digests {
    fn add(&mut self, e: &RecordedEvent) -> Result<(), serde_json::Error> {
        let mut v = serde_json::to_value(e)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("position");
        }
        let entry = self.0.entry(e.stream).or_default();
        entry.0 += 1;
        entry.1.update(serde_json::to_vec(&v)?);
        entry.1.update(b"\n");
        Ok(())
    }

    fn finish(self) -> HashMap<StreamName, (u64, String)> {
        self.0
            .into_iter()
            .map(|(s, (n, h))| (s, (n, hex(&h.finalize()))))
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies a whole log from `source` to `target` (both backends without the encryption
/// layer, so sealed fields move sealed), then re-reads the target and checks that every
/// stream has the same events — count and checksum — as the source. Refuses a target that
/// holds any event. Event ids, versions, metadata and commit times are kept; positions are
/// kept between the gap-free backends (SQLite, PostgreSQL), which makes export output of
/// source and target identical.
pub async fn copy(
    source: &SharedStore,
    target: &SharedStore,
    mut progress: impl FnMut(CopyProgress),
) -> Result<CopyReport, CopyError> {
    if let Some(head) = target.head_position().await? {
        return Err(CopyError::TargetNotEmpty { head });
    }
    let in_flight = in_flight(target);
    let mut expected = Digests::default();
    let mut copied = 0u64;
    for_each_page(source, async |page| {
        for e in &page {
            expected.add(e)?;
        }
        let done = copied;
        copied += append_in_order(
            target,
            page.into_iter().map(Ok::<_, CopyError>),
            in_flight,
            |n| progress(CopyProgress::Copied(done + n)),
        )
        .await?;
        Ok::<_, CopyError>(())
    })
    .await?;

    let mut actual = Digests::default();
    let mut verified = 0u64;
    for_each_page(target, async |page| {
        for e in &page {
            actual.add(e)?;
        }
        verified += page.len() as u64;
        progress(CopyProgress::Verified(verified));
        Ok::<_, CopyError>(())
    })
    .await?;
    let expected = expected.finish();
    let mut actual = actual.finish();
    let missing = (0, String::from("-"));
    for (stream, want) in &expected {
        let got = actual.remove(stream).unwrap_or_else(|| missing.clone());
        if &got != want {
            return Err(mismatch(stream.to_string(), want, &got));
        }
    }
    if let Some((stream, got)) = actual.into_iter().next() {
        return Err(mismatch(stream.to_string(), &missing, &got));
    }
    Ok(CopyReport {
        events: copied,
        streams: expected.len() as u64,
    })
}

fn mismatch(stream: String, source: &(u64, String), target: &(u64, String)) -> CopyError {
    CopyError::Mismatch {
        stream,
        source_events: source.0,
        source_sha256: source.1.clone(),
        target_events: target.0,
        target_sha256: target.1.clone(),
    }
}
