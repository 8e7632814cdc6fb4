//! An [`EventStore`] that seals personal fields on append and opens them on read, in front of
//! any backend. Everything that reads the log (actors, projections, tools, subscriptions)
//! goes through it, so none of them handles keys, and the backend never sees plaintext.

use crate::cipher::{self, CipherError, Fields};
use crate::data_key::{KeyUse, keys_of};
use crate::{
    AppendResult, DataKeys, Direction, EventData, EventStore, ExpectedVersion, RecordedEvent,
    SharedStore, StoreError,
};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use neulbi_domain::StreamName;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The encrypting front of the event store.
pub struct CryptoStore {
    inner: SharedStore,
    keys: Arc<dyn DataKeys>,
}

impl CryptoStore {
    /// Wraps `inner`, sealing with keys from `keys`.
    pub fn new(inner: SharedStore, keys: Arc<dyn DataKeys>) -> Self {
        Self { inner, keys }
    }
}

fn malformed(e: CipherError) -> StoreError {
    StoreError::InvalidAppend(e.to_string())
}

/// Opens the personal fields of a page of events with one key lookup per owner.
async fn open_all(
    keys: &dyn DataKeys,
    mut events: Vec<RecordedEvent>,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut owners = BTreeSet::new();
    for e in &events {
        cipher::owners(&e.data, Fields::Sealed, &mut owners).map_err(|err| corrupt(e, err))?;
    }
    if owners.is_empty() {
        return Ok(events);
    }
    let keys = keys_of(keys, owners, KeyUse::Open).await?;
    for e in &mut events {
        cipher::open(&mut e.data, &keys).map_err(|err| corrupt(e, err))?;
    }
    Ok(events)
}

fn corrupt(e: &RecordedEvent, err: CipherError) -> StoreError {
    StoreError::Corrupt {
        position: i64::try_from(e.position).unwrap_or(i64::MAX),
        reason: err.to_string(),
    }
}

#[async_trait]
impl EventStore for CryptoStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        mut events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        let mut owners = BTreeSet::new();
        for e in &events {
            cipher::owners(&e.data, Fields::Plain, &mut owners).map_err(malformed)?;
        }
        if !owners.is_empty() {
            let keys = keys_of(self.keys.as_ref(), owners, KeyUse::Seal).await?;
            for e in &mut events {
                cipher::seal(&mut e.data, &keys).map_err(malformed)?;
            }
        }
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self
            .inner
            .read_stream(stream, from_version, direction, limit)
            .await?;
        open_all(self.keys.as_ref(), events).await
    }

    async fn read_all(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_all(from_position, limit).await?;
        open_all(self.keys.as_ref(), events).await
    }

    async fn read_all_backward(
        &self,
        before_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_all_backward(before_position, limit).await?;
        open_all(self.keys.as_ref(), events).await
    }

    async fn read_all_sealed(
        &self,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(from_position, limit).await
    }

    fn data_keys(&self) -> Option<Arc<dyn DataKeys>> {
        Some(self.keys.clone())
    }

    fn positions(&self) -> crate::Positions {
        self.inner.positions()
    }

    async fn head_position(&self) -> Result<Option<u64>, StoreError> {
        self.inner.head_position().await
    }

    fn head_changes(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.inner.head_changes()
    }

    fn subscribe_all(
        &self,
        from_position: u64,
    ) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
        let keys = self.keys.clone();
        self.inner
            .subscribe_all(from_position)
            .then(move |item| {
                let keys = keys.clone();
                async move {
                    let event = item?;
                    let mut opened = open_all(keys.as_ref(), vec![event]).await?;
                    opened.pop().ok_or(StoreError::Closed)
                }
            })
            .boxed()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
