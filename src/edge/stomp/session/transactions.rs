//! STOMP transactions: BEGIN opens one, SEND/ACK/NACK naming it are buffered, COMMIT performs
//! them in order (its RECEIPT after the last append), ABORT and the end of the session drop them.

use super::*;

impl Session {
    pub(super) fn transaction_id<'f>(
        &mut self,
        frame: &'f Frame,
        receipt: &Option<String>,
        now: Instant,
    ) -> Option<&'f str> {
        let tx = frame.get("transaction");
        if tx.is_none() {
            let what = frame.command;
            self.error(&format!("{what} without transaction"), receipt.clone(), now);
        }
        tx
    }

    pub(super) fn begin(&mut self, frame: &Frame, receipt: Option<String>, now: Instant) {
        let Some(tx) = self.transaction_id(frame, &receipt, now) else {
            return;
        };
        if self.transactions.contains_key(tx) {
            return self.error("transaction already open", receipt, now);
        }
        if self.transactions.len() >= self.config.max_transactions {
            return self.error("too many open transactions", receipt, now);
        }
        self.transactions.insert(tx.to_owned(), Vec::new());
        self.receipt(receipt, now);
    }

    /// Adds a SEND/ACK/NACK to an open transaction; its RECEIPT (if asked) says it was
    /// buffered, the COMMIT's says it was performed.
    pub(super) fn buffer(
        &mut self,
        tx: &str,
        action: Action,
        receipt: Option<String>,
        now: Instant,
    ) {
        let max = self.config.max_transaction_frames;
        let Some(actions) = self.transactions.get_mut(tx) else {
            return self.error("unknown transaction", receipt, now);
        };
        if actions.len() >= max {
            return self.error("too many frames in the transaction", receipt, now);
        }
        actions.push(action);
        self.receipt(receipt, now);
    }

    /// Performs the buffered frames in order. The RECEIPT rides on the last SEND, so it goes
    /// out only once every buffered SEND is durable; a refused one ends the session with an
    /// ERROR (earlier SENDs stay posted, later ones are dropped).
    pub(super) fn commit(&mut self, frame: &Frame, receipt: Option<String>, now: Instant) {
        let Some(tx) = self.transaction_id(frame, &receipt, now) else {
            return;
        };
        let Some(actions) = self.transactions.remove(tx) else {
            return self.error("unknown transaction", receipt, now);
        };
        let last_write = actions
            .iter()
            .rposition(|a| matches!(a, Action::Post { .. } | Action::MarkRead { .. }));
        for (i, action) in actions.into_iter().enumerate() {
            if self.state != State::Connected {
                return;
            }
            let confirm = Some(i) == last_write;
            self.perform(action, receipt.clone(), confirm, now);
        }
        if last_write.is_none() && self.state == State::Connected {
            self.receipt(receipt, now);
        }
    }

    pub(super) fn abort(&mut self, frame: &Frame, receipt: Option<String>, now: Instant) {
        let Some(tx) = self.transaction_id(frame, &receipt, now) else {
            return;
        };
        if self.transactions.remove(tx).is_none() {
            return self.error("unknown transaction", receipt, now);
        }
        self.receipt(receipt, now);
    }
}
