//! Event subscriptions, both halves:
//!
//! - the **subscriber's shard** (where its connection lives) keeps the
//!   [`Subscription`]: its filter, its cursor (the position it has seen in
//!   every shard's ring), events held until its `SH_SUBSCRIBE` answer is
//!   out, and the bytes each shard may send next;
//! - **every shard** keeps a [`Subscriber`] per subscription: a position in
//!   its own ring and a byte credit. At the end of each turn it encodes the
//!   events past that position that pass the filter, up to the credit, and
//!   sends them to the subscriber's shard, which writes them on the
//!   connection and gives the credit back as the connection's output drains.
//!
//! So a stalled subscriber holds no copies: only positions, and at most its
//! credit per shard in flight. When a ring overwrites events a subscriber
//! had not reached, it is sent a `lost` event with their count.

use std::sync::Arc;

use ahash::AHashMap;

use super::gather::GatherKind;
use super::{PartReply, Replies, Router};
use crate::events::{
    Cursor, CursorError, EventFilter, encode_event_head, encode_event_tail, encode_lost_head,
};
use crate::mesh::{Envelope, Part, PartResult, ShardId, Ticket};
use crate::protocol::answer;
use crate::protocol::{CommandName, Status, encode_status};

/// Ring entries a shard looks at for one subscription per turn, so a deep
/// backlog (or a filter that matches little) never stalls the loop.
const SCAN_BUDGET: u64 = 4096;

/// A subscription, on the shard of its connection.
pub struct Subscription {
    /// The `SH_SUBSCRIBE` request: its connection, and where its answer goes.
    ticket: Ticket,
    /// Per shard, the last ring position delivered (or skipped).
    positions: Vec<u64>,
    /// Whether the `SH_SUBSCRIBE` answer is out: events wait until it is.
    answered: bool,
    /// Events that arrived before the answer: (shard, position, event
    /// without its cursor; empty for a position update alone).
    held: Vec<(ShardId, u64, Vec<u8>)>,
    /// Per shard, bytes written to the connection and not yet credited back.
    owed: Vec<usize>,
}

/// A subscription, on every shard: where it is in this shard's ring.
pub struct Subscriber {
    filter: Arc<EventFilter>,
    /// The next ring position to look at.
    next: u64,
    /// Bytes this shard may still send before the connection takes some.
    credit: usize,
    /// Events for it (passing its filter) that the ring let go before it
    /// read them.
    lost: u64,
}

/// Both halves of this shard's subscriptions.
#[derive(Default)]
pub struct EventSubscriptions {
    /// Subscriptions of this shard's connections, by id.
    mine: AHashMap<u64, Subscription>,
    /// The subscription of each connection (by slot and connection id).
    by_connection: AHashMap<(usize, u64), u64>,
    next_id: u64,
    /// Every subscription's position in this shard's ring, by (its
    /// shard, its id).
    subscribers: AHashMap<(ShardId, u64), Subscriber>,
    /// Subscribers that asked for keys: while any, events copy them.
    with_keys: usize,
    /// Some subscriber has events due and credit: the loop must not sleep.
    pending: bool,
    /// The ring's head when subscribers were last served: a newer one
    /// means new events to send.
    served_head: u64,
    /// Events subscribers missed (told to them as `lost`), for the metrics.
    lost_total: u64,
}

impl EventSubscriptions {
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Subscriptions of this shard's connections.
    pub fn subscriber_count(&self) -> u64 {
        self.mine.len() as u64
    }

    /// Events subscribers on this shard's ring were told they lost.
    pub fn lost_count(&self) -> u64 {
        self.lost_total
    }
}

impl Router {
    /// `SH_SUBSCRIBE`: replaces the connection's subscription, registers the
    /// new one with every shard and answers once all have.
    pub(super) fn subscribe(
        &mut self,
        ticket: Ticket,
        filter: EventFilter,
        after: Option<Box<str>>,
        replies: &mut dyn Replies,
    ) {
        let shards = self.config.shards;
        // (the position to resume after per shard, known loss)
        let resume: Option<(Vec<u64>, bool)> = match after.as_deref() {
            None => None,
            Some(text) => match Cursor::parse(text, self.config.instance, shards) {
                Ok(cursor) => Some((cursor.positions, false)),
                // A restart: every ring starts over; resume from the oldest.
                Err(CursorError::OtherInstance) => Some((vec![0; shards], true)),
                Err(CursorError::Malformed | CursorError::WrongShards) => {
                    let m = Some("after is not a cursor of this server");
                    self.answer_here(ticket, replies, |_, out| {
                        encode_status(out, CommandName::Subscribe, Status::ValueSize, None, m)
                    });
                    return;
                }
            },
        };
        self.end_subscription_of(ticket);
        let events = &mut self.events;
        let sub = events.next_id;
        events.next_id += 1;
        events
            .by_connection
            .insert((ticket.conn, ticket.conn_id), sub);
        events.mine.insert(
            sub,
            Subscription {
                ticket,
                positions: vec![0; shards],
                answered: false,
                held: Vec::new(),
                owed: vec![0; shards],
            },
        );
        let filter = Arc::new(filter);
        let unknown_loss = resume.as_ref().is_some_and(|(_, unknown)| *unknown);
        let parts = (0..shards)
            .map(|shard| {
                let after = resume.as_ref().map(|(positions, _)| positions[shard]);
                let filter = filter.clone();
                (shard, Part::Subscribe { sub, filter, after })
            })
            .collect();
        let kind = GatherKind::Subscribe {
            sub,
            positions: vec![0; shards],
            lost: 0,
            resumed: resume.is_some(),
            unknown_loss,
        };
        self.fan_out(ticket, kind, parts, replies);
    }

    /// `SH_UNSUBSCRIBE`: no event follows its answer.
    pub(super) fn unsubscribe(&mut self, ticket: Ticket, replies: &mut dyn Replies) {
        self.end_subscription_of(ticket);
        self.answer_here(ticket, replies, |_, out| answer::unsubscribed(out));
    }

    /// Ends the subscription of `ticket`'s connection, if it has one.
    fn end_subscription_of(&mut self, ticket: Ticket) {
        if let Some(sub) = self
            .events
            .by_connection
            .remove(&(ticket.conn, ticket.conn_id))
        {
            self.end_subscription(sub);
        }
    }

    /// Forgets subscription `sub` here and on every shard.
    fn end_subscription(&mut self, sub: u64) {
        if let Some(s) = self.events.mine.remove(&sub) {
            self.events
                .by_connection
                .remove(&(s.ticket.conn, s.ticket.conn_id));
        }
        let me = self.config.id;
        for shard in 0..self.config.shards {
            if shard == me {
                self.drop_subscriber(me, sub);
            } else {
                self.outbox[shard].push(Envelope::Unsubscribe { from: me, sub });
            }
        }
    }

    /// The `SH_SUBSCRIBE` answer is out: the events that waited follow it.
    pub(super) fn subscription_answered(
        &mut self,
        sub: u64,
        positions: Vec<u64>,
        replies: &mut dyn Replies,
    ) {
        let Some(s) = self.events.mine.get_mut(&sub) else {
            return;
        };
        s.answered = true;
        for (shard, &position) in positions.iter().enumerate() {
            s.positions[shard] = s.positions[shard].max(position);
        }
        let held = std::mem::take(&mut s.held);
        let mut delivered = true;
        for (shard, position, head) in held {
            delivered &= self.deliver(sub, shard, position, head, replies);
        }
        if !delivered {
            self.end_subscription(sub);
        }
    }

    /// Part of `SH_SUBSCRIBE`: registers the subscription with this
    /// shard's ring.
    pub(super) fn register_subscriber(
        &mut self,
        reply: PartReply,
        sub: u64,
        filter: Arc<EventFilter>,
        after: Option<u64>,
    ) -> PartResult {
        let home = match reply {
            PartReply::Local { .. } => self.config.id,
            PartReply::Remote { from, .. } => from,
        };
        let ring = self.store.events();
        let (head, oldest) = (ring.head(), ring.oldest());
        // Resume after `after`, or (beyond what this ring has) from now.
        let position = after.map_or(head, |p| p.min(head));
        let lost = (oldest - 1).saturating_sub(position);
        self.events.lost_total += lost;
        let position = position.max(oldest - 1);
        if filter.with_keys {
            self.events.with_keys += 1;
        }
        self.events.subscribers.insert(
            (home, sub),
            Subscriber {
                filter,
                next: position + 1,
                credit: self.config.event_credit,
                lost: 0,
            },
        );
        self.store.keep_evicted(true);
        self.event_keys_changed();
        self.events.pending = true;
        PartResult::Subscribed {
            shard: self.config.id,
            position,
            lost,
        }
    }

    fn drop_subscriber(&mut self, home: ShardId, sub: u64) {
        if let Some(s) = self.events.subscribers.remove(&(home, sub))
            && s.filter.with_keys
        {
            self.events.with_keys -= 1;
            self.event_keys_changed();
        }
        if self.events.subscribers.is_empty() {
            self.store.keep_evicted(false);
        }
    }

    fn event_keys_changed(&mut self) {
        let max = (self.events.with_keys > 0).then_some(self.config.max_payload);
        self.store.set_event_keys(max);
    }

    /// What another shard sent about subscriptions.
    pub(super) fn receive_events(&mut self, envelope: Envelope, replies: &mut dyn Replies) {
        match envelope {
            Envelope::Events {
                from,
                sub,
                events,
                scanned_to,
            } => self.events_arrived(from, sub, events, scanned_to, replies),
            Envelope::EventCredit { from, sub, bytes } => {
                if let Some(s) = self.events.subscribers.get_mut(&(from, sub)) {
                    s.credit += bytes;
                    self.events.pending = true;
                }
            }
            Envelope::Unsubscribe { from, sub } => self.drop_subscriber(from, sub),
            _ => {}
        }
    }

    fn events_arrived(
        &mut self,
        from: ShardId,
        sub: u64,
        events: Vec<(u64, Vec<u8>)>,
        scanned_to: u64,
        replies: &mut dyn Replies,
    ) {
        let Some(s) = self.events.mine.get_mut(&sub) else {
            // Over (unsubscribed, replaced, its connection gone): make sure
            // that shard forgets it too.
            if from == self.config.id {
                self.drop_subscriber(from, sub);
            } else {
                let me = self.config.id;
                self.outbox[from].push(Envelope::Unsubscribe { from: me, sub });
            }
            return;
        };
        if !s.answered {
            s.held
                .extend(events.into_iter().map(|(p, head)| (from, p, head)));
            s.held.push((from, scanned_to, Vec::new()));
            return;
        }
        let mut delivered = true;
        for (position, head) in events {
            delivered &= self.deliver(sub, from, position, head, replies);
        }
        delivered &= self.deliver(sub, from, scanned_to, Vec::new(), replies);
        if !delivered {
            self.end_subscription(sub);
        }
    }

    /// Writes one event (an empty `head`: only moves the position) on the
    /// subscription's connection; false when that connection is gone.
    fn deliver(
        &mut self,
        sub: u64,
        shard: ShardId,
        position: u64,
        mut head: Vec<u8>,
        replies: &mut dyn Replies,
    ) -> bool {
        let Some(s) = self.events.mine.get_mut(&sub) else {
            return true;
        };
        s.positions[shard] = s.positions[shard].max(position);
        if head.is_empty() {
            return true;
        }
        s.owed[shard] += head.len();
        encode_event_tail(&mut head, self.config.instance, &s.positions);
        replies.push(s.ticket, head)
    }

    /// The end of a turn: every subscriber gets this shard's new events
    /// (as far as its credit goes), and connections that took events
    /// give their credit back.
    pub(super) fn events_turn(&mut self, replies: &mut dyn Replies) {
        if self.events.subscribers.is_empty() && self.events.mine.is_empty() {
            return;
        }
        self.return_event_credit(replies);
        let evicted = self.store.take_evicted();
        for s in self.events.subscribers.values_mut() {
            s.lost += evicted
                .iter()
                .filter(|e| e.seq >= s.next && s.filter.passes_evicted(e))
                .count() as u64;
        }
        let ring = self.store.events();
        let (head, oldest) = (ring.head(), ring.oldest());
        if self.events.subscribers.is_empty()
            || !self.events.pending && head == self.events.served_head
        {
            return;
        }
        self.events.served_head = head;
        let me = self.config.id;
        let mut more = false;
        let mut batches = Vec::new();
        for (&(home, sub), s) in self.events.subscribers.iter_mut() {
            if s.next > head || s.credit == 0 {
                continue;
            }
            let mut events = Vec::new();
            if s.next < oldest {
                // Only what would have passed its filter counts.
                if s.lost > 0 {
                    let mut lost = Vec::new();
                    encode_lost_head(&mut lost, s.lost);
                    self.events.lost_total += s.lost;
                    s.credit = s.credit.saturating_sub(lost.len());
                    events.push((oldest - 1, lost));
                }
                s.lost = 0;
                s.next = oldest;
            }
            let end = head.min(s.next + SCAN_BUDGET - 1);
            while s.next <= end && s.credit > 0 {
                if let Some(event) = ring.get(s.next)
                    && s.filter.passes(event)
                {
                    let mut bytes = Vec::with_capacity(160);
                    encode_event_head(&mut bytes, event, s.filter.with_keys);
                    s.credit = s.credit.saturating_sub(bytes.len());
                    events.push((s.next, bytes));
                }
                s.next += 1;
            }
            more |= s.next <= head && s.credit > 0;
            batches.push((home, sub, events, s.next - 1));
        }
        self.events.pending = more;
        for (home, sub, events, scanned_to) in batches {
            if home == me {
                self.events_arrived(me, sub, events, scanned_to, replies);
            } else {
                self.outbox[home].push(Envelope::Events {
                    from: me,
                    sub,
                    events,
                    scanned_to,
                });
            }
        }
        // This shard's own subscribers just took events: their credit
        // comes back now (which keeps the loop turning while a backlog
        // lasts), not at whatever next wakes the shard.
        self.return_event_credit(replies);
    }

    /// Credit back for events a connection has room for again; forgets
    /// subscriptions whose connection is gone.
    pub(super) fn return_event_credit(&mut self, replies: &mut dyn Replies) {
        if self.events.mine.is_empty() {
            return;
        }
        let me = self.config.id;
        let mut gone = Vec::new();
        let mut credits = Vec::new();
        for (&sub, s) in self.events.mine.iter_mut() {
            match replies.has_room(s.ticket) {
                None => gone.push(sub),
                Some(false) => {}
                Some(true) => {
                    for (shard, owed) in s.owed.iter_mut().enumerate() {
                        if *owed > 0 {
                            credits.push((shard, sub, std::mem::take(owed)));
                        }
                    }
                }
            }
        }
        for (shard, sub, bytes) in credits {
            if shard == me {
                if let Some(s) = self.events.subscribers.get_mut(&(me, sub)) {
                    s.credit += bytes;
                    self.events.pending = true;
                }
            } else {
                self.outbox[shard].push(Envelope::EventCredit {
                    from: me,
                    sub,
                    bytes,
                });
            }
        }
        for sub in gone {
            self.end_subscription(sub);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::router::LocalDispatcher;

    fn kinds(pushed: &[Vec<u8>]) -> Vec<String> {
        pushed
            .iter()
            .map(|e| {
                let text = String::from_utf8_lossy(e);
                let at = text.find("\"event\":\"").expect("an event") + 9;
                text[at..].split('"').next().unwrap_or_default().to_string()
            })
            .collect()
    }

    /// On a manual clock: the wheel's expiry event is out in the turn its
    /// deadline comes, not a tick later, from whichever shard owns it.
    #[test]
    fn expiry_events_leave_in_the_tick_they_are_due() {
        let mut d = LocalDispatcher::with_shards(5, 2);
        let r = d.handle(
            br#"{"SH_SUBSCRIBE":{"events":["expired","keysExpired"]}}"#,
            true,
        );
        assert!(String::from_utf8_lossy(&r).contains(r#""st":1"#));
        for _ in 0..6 {
            let r = d.handle(
                br#"{"SH_NEW":{"keys":{"a":1},"expiry":{"duration":1,"deleteSession":true}}}"#,
                true,
            );
            assert!(String::from_utf8_lossy(&r).contains(r#""st":1"#));
        }
        d.handle(
            br#"{"SH_NEW":{"keys":{"a":1},"expiry":{"duration":2}}}"#,
            true,
        );
        assert!(d.take_pushed().is_empty(), "created is filtered out");
        d.advance(999);
        assert!(d.take_pushed().is_empty(), "nothing is due yet");
        d.advance(1);
        let pushed = d.take_pushed();
        assert_eq!(kinds(&pushed), ["expired"; 6]);
        assert!(
            pushed.iter().all(|e| String::from_utf8_lossy(e)
                .contains(r#""at":1000,"deadline":1000,"reason":"idle""#)),
            "{:?}",
            pushed
                .iter()
                .map(|e| String::from_utf8_lossy(e))
                .collect::<Vec<_>>()
        );
        d.advance(999);
        assert!(d.take_pushed().is_empty());
        d.advance(1);
        assert_eq!(kinds(&d.take_pushed()), ["keysExpired"]);
        // Its keys are gone: the next deadline clears nothing, says nothing.
        d.advance(2000);
        assert!(d.take_pushed().is_empty());
    }
}
