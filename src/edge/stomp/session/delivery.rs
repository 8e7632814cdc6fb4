//! Deliveries to subscriptions and their acknowledgement: MESSAGE frames per subscription,
//! ACK/NACK in the client modes (one redelivery on NACK), and the slow-consumer bound.

use super::*;

impl Session {
    pub(super) fn ack_frame(
        &mut self,
        frame: &Frame,
        nack: bool,
        receipt: Option<String>,
        now: Instant,
    ) {
        let target = match self.version {
            Some(Version::V1_2) => frame.get("id").map(|id| AckTarget::AckId(id.to_owned())),
            version => frame.get("message-id").and_then(|m| {
                let subscription = frame.get("subscription").map(str::to_owned);
                // 1.1 names the subscription; 1.0 has no such header.
                (version == Some(Version::V1_0) || subscription.is_some()).then(|| {
                    AckTarget::MessageId {
                        message_id: m.to_owned(),
                        subscription,
                    }
                })
            }),
        };
        let Some(target) = target else {
            let what = if nack { "NACK" } else { "ACK" };
            let needs = match self.version {
                Some(Version::V1_2) => "id",
                Some(Version::V1_1) => "message-id and subscription",
                _ => "message-id",
            };
            return self.error(&format!("{what} without {needs}"), receipt, now);
        };
        let action = Action::Ack { nack, target };
        match frame.get("transaction").map(str::to_owned) {
            Some(tx) => self.buffer(&tx, action, receipt, now),
            None => self.perform(action, receipt, true, now),
        }
    }

    /// Applies an ACK/NACK; false if it names no unacknowledged delivery. `client` mode is
    /// cumulative (this and every earlier one), `client-individual` only this one. A NACKed
    /// delivery is sent once more with `redelivered:true`; a NACKed redelivery is dropped.
    pub(super) fn acknowledge(&mut self, nack: bool, target: &AckTarget, now: Instant) -> bool {
        let found = self.subscriptions.iter().find_map(|(id, sub)| {
            let index = sub.unacked.iter().position(|u| match target {
                AckTarget::AckId(ack_id) => u.ack_id == *ack_id,
                AckTarget::MessageId {
                    message_id,
                    subscription,
                } => {
                    u.delivery.message_id == *message_id
                        && subscription.as_ref().is_none_or(|s| s == id)
                }
            })?;
            Some((id.clone(), index))
        });
        let Some((id, index)) = found else {
            return false;
        };
        let Some(sub) = self.subscriptions.get_mut(&id) else {
            return false;
        };
        let settled: Vec<Unacked> = match sub.ack {
            AckMode::Client => sub.unacked.drain(..=index).collect(),
            AckMode::ClientIndividual | AckMode::Auto => {
                sub.unacked.remove(index).into_iter().collect()
            }
        };
        // Counts only: subscription ids are client-chosen text.
        tracing::debug!(count = settled.len(), nack, "STOMP acknowledgement");
        if nack {
            for u in settled.into_iter().filter(|u| !u.redelivered) {
                if !self.send_message(&id, &u.delivery, true, now) {
                    break;
                }
            }
        }
        true
    }

    /// A delivery for `delivery.topic`: one MESSAGE per active subscription on it. A client
    /// whose queue is full is disconnected instead of growing server memory.
    pub fn deliver(&mut self, delivery: &Delivery, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        let mut targets: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s.active && s.topic == delivery.topic)
            .map(|(id, _)| id.clone())
            .collect();
        targets.sort();
        for id in targets {
            let Some(sub) = self.subscriptions.get_mut(&id) else {
                continue;
            };
            if let Some(held) = &mut sub.held {
                if held.len() >= self.config.max_outbound {
                    return self.handle_overflow(now);
                }
                held.push(delivery.clone());
                continue;
            }
            if sub.floor.is_some_and(|floor| delivery.position <= floor) {
                // Already replayed by the catch-up.
                continue;
            }
            if !self.send_message(&id, delivery, false, now) {
                return;
            }
        }
    }

    /// Writes one MESSAGE for subscription `id`, tracking it until acknowledged in the client
    /// modes. False if the session ended instead (slow consumer).
    pub(super) fn send_message(
        &mut self,
        id: &str,
        delivery: &Delivery,
        redelivered: bool,
        now: Instant,
    ) -> bool {
        if self.out.len() >= self.config.max_outbound {
            self.handle_overflow(now);
            return false;
        }
        let max_unacked = self.config.max_unacked;
        let version = self.version;
        let Some(sub) = self.subscriptions.get_mut(id) else {
            return true;
        };
        self.message_seq += 1;
        let mut message = Frame::new(Command::Message)
            .header("subscription", id)
            .header("message-id", delivery.message_id.clone())
            .header("destination", sub.topic.to_wire())
            .header("content-type", delivery.content_type);
        if sub.ack != AckMode::Auto {
            if sub.unacked.len() >= max_unacked {
                self.slow_consumer("too many unacknowledged messages", now);
                return false;
            }
            let ack_id = format!("{}-{}", delivery.message_id, self.message_seq);
            if version == Some(Version::V1_2) {
                message = message.header("ack", ack_id.clone());
            }
            sub.unacked.push_back(Unacked {
                ack_id,
                delivery: delivery.clone(),
                redelivered,
            });
        }
        if redelivered {
            message = message.header(REDELIVERED_HEADER, "true");
        }
        self.push_frame(message.body(delivery.body.clone()), now);
        true
    }

    /// The client does not read fast enough (here or in the transport's queue): drop what is
    /// queued, send ERROR and close.
    pub fn handle_overflow(&mut self, now: Instant) {
        self.slow_consumer("slow consumer", now);
    }

    pub(super) fn slow_consumer(&mut self, message: &str, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        self.subscriptions.clear();
        self.out.clear();
        self.error(message, None, now);
        self.set_close_reason(CloseReason::SlowConsumer);
    }
}
