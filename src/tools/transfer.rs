//! `neulbi events export|import`: the whole log as NDJSON, one recorded event per line, in
//! log order. Both work on the backend directly (below the encryption layer): personal
//! fields leave sealed (an export is no way around erasure) and come back sealed. Importing
//! into an empty store reproduces the same log — event ids, versions, positions,
//! timestamps — so export → import → export is byte-exact. An import file carrying a plain
//! personal field is refused: it would bypass encryption.

use crate::store::{EventData, ExpectedVersion, RecordedEvent, SharedStore, StoreError};
use futures::StreamExt;
use neulbi_domain::StreamName;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use thiserror::Error;

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
    let mut from = 0;
    let mut n = 0u64;
    loop {
        let page = raw.read_all(from, 4096).await?;
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        for e in &page {
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(b"\n")?;
        }
        n += page.len() as u64;
        progress(n);
    }
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
/// up to 256 appends in flight: each is queued to group commit on its first poll, and
/// polls happen in file order, so positions come out in file order. `raw` must be the
/// backend without the encryption layer (no awaits before queueing). Run [`check`] first.
pub async fn import(
    store: &SharedStore,
    input: impl BufRead,
    mut progress: impl FnMut(u64),
) -> Result<u64, ImportError> {
    let mut lines = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if !line.trim().is_empty() {
            lines.push((i + 1, line));
        }
    }
    // tokio's cooperative budget can make a ready channel send return Pending once a task
    // has done enough work, which would let a later append overtake an earlier one. The
    // import loop opts out of it, so every append is queued on its first poll, in file order.
    tokio::task::unconstrained(async {
        let mut appends = futures::stream::iter(lines.into_iter().map(|(number, line)| {
            let store = store.clone();
            async move {
                let e = parse(&line, number)?;
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
                Ok::<(), ImportError>(())
            }
        }))
        .buffered(256);
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
