//! `subscribe_all` for every backend: catch up by paging `read_all`, then wait for the head to
//! move and page again. Because positions become visible only in gap-free order, reading
//! "everything from my next position" can never skip an event.

use super::{RecordedEvent, StoreError};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How many events one catch-up read fetches.
const PAGE: usize = 512;

/// Reads one page of the log; the backends hand in their `read_all`.
pub(crate) type ReadPage = Arc<
    dyn Fn(u64, usize) -> BoxFuture<'static, Result<Vec<RecordedEvent>, StoreError>> + Send + Sync,
>;

struct State {
    next: u64,
    buffer: VecDeque<RecordedEvent>,
    head: watch::Receiver<Option<u64>>,
    read: ReadPage,
    poll: Duration,
    failed: bool,
}

/// Follows the log from `from`. `head` announces commits (in-process, or from other nodes);
/// `poll` bounds how long a missed announcement can delay delivery.
pub(crate) fn follow(
    read: ReadPage,
    head: watch::Receiver<Option<u64>>,
    from: u64,
    poll: Duration,
) -> BoxStream<'static, Result<RecordedEvent, StoreError>> {
    let state = State {
        next: from,
        buffer: VecDeque::new(),
        head,
        read,
        poll,
        failed: false,
    };
    stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        loop {
            if let Some(event) = st.buffer.pop_front() {
                st.next = event.position + 1;
                return Some((Ok(event), st));
            }
            // Mark the current head as seen *before* reading, so a commit that lands during
            // the read wakes the wait below instead of being missed.
            st.head.borrow_and_update();
            match (st.read)(st.next, PAGE).await {
                Ok(page) if !page.is_empty() => {
                    st.buffer.extend(page);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    st.failed = true;
                    return Some((Err(e), st));
                }
            }
            match tokio::time::timeout(st.poll, st.head.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                // The store was dropped: end the stream.
                Ok(Err(_)) => return None,
            }
        }
    })
    .boxed()
}
