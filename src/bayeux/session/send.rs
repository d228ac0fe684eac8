//! Starting requests: the handshake, the long poll and batches of everything else.

use super::*;

impl Session {
    /// Starts whatever may start now.
    pub(super) fn pump(&mut self, now: Instant) {
        if self.phase == Phase::Unconnected
            && self.other_batch.is_none()
            && self.handshake_at.is_some_and(|t| t <= now)
        {
            self.send_handshake();
        }
        if self.phase == Phase::Handshaken
            && self.connect_id.is_none()
            && self.connect_at.is_some_and(|t| t <= now)
        {
            self.send_connect();
        }
        let can_send =
            matches!(self.phase, Phase::Handshaken | Phase::Disconnecting) && !self.connect_failing;
        if can_send && self.other_batch.is_none() {
            self.send_batch();
        }
    }

    pub(super) fn send_handshake(&mut self) {
        self.phase = Phase::Handshaking;
        self.handshake_at = None;
        // Advice belongs to a session: forget the old one (cometd/cometd#722).
        self.advice = Advice::default();
        self.connection_type = None;
        let id = self.new_id();
        let mut msg = Message::new(META_HANDSHAKE);
        msg.id = Some(id.clone());
        msg.version = Some("1.0".to_owned());
        msg.minimum_version = Some("1.0".to_owned());
        msg.supported_connection_types = Some(self.options.connection_types.clone());
        self.pending.insert(id.clone(), Pending::Handshake);
        self.other_batch = Some(vec![id]);
        self.outputs.push_back(Output::Send {
            lane: Lane::Other,
            messages: vec![msg],
        });
    }

    pub(super) fn send_connect(&mut self) {
        self.connect_at = None;
        let id = self.new_id();
        let mut msg = Message::new(META_CONNECT);
        msg.id = Some(id.clone());
        msg.client_id.clone_from(&self.client_id);
        msg.connection_type.clone_from(&self.connection_type);
        if self.first_connect {
            // Ask the server to answer at once, so a lost session is found out quickly.
            msg.advice = Some(json!({ "timeout": 0 }));
        }
        self.connect_id = Some(id);
        self.outputs.push_back(Output::Send {
            lane: Lane::Connect,
            messages: vec![msg],
        });
    }

    pub(super) fn send_batch(&mut self) {
        let mut batch = Vec::new();
        let mut ids = Vec::new();
        let max = self.options.max_batch.max(1);
        if self.phase == Phase::Handshaken {
            let wanted: Vec<String> = self
                .subs
                .iter()
                .filter(|(_, s)| s.state == SubState::Wanted)
                .map(|(p, _)| p.clone())
                .take(max)
                .collect();
            for pattern in wanted {
                let id = self.new_id();
                let mut msg = Message::new(META_SUBSCRIBE);
                msg.client_id.clone_from(&self.client_id);
                msg.subscription = Some(Value::String(pattern.clone()));
                if let Some(sub) = self.subs.get_mut(&pattern) {
                    sub.state = SubState::Sending(id.clone());
                }
                self.pending.insert(id.clone(), Pending::Subscribe(pattern));
                msg.id = Some(id);
                batch.push(msg);
            }
        }
        while batch.len() < max {
            let Some(mut msg) = self.outbox.pop_front() else {
                break;
            };
            let id = match msg.id.clone() {
                Some(id) => id,
                None => self.new_id(),
            };
            msg.id = Some(id.clone());
            let pending = if msg.channel == META_UNSUBSCRIBE {
                Pending::Unsubscribe(msg.subscriptions().into_iter().next().unwrap_or_default())
            } else {
                Pending::Publish(Box::new(msg.clone()))
            };
            msg.client_id.clone_from(&self.client_id);
            self.pending.insert(id, pending);
            batch.push(msg);
        }
        if self.disconnect_requested && self.outbox.is_empty() && batch.len() < max {
            self.disconnect_requested = false;
            let id = self.new_id();
            let mut msg = Message::new(META_DISCONNECT);
            msg.client_id.clone_from(&self.client_id);
            msg.id = Some(id.clone());
            self.pending.insert(id, Pending::Disconnect);
            batch.push(msg);
            if let Some(abandoned) = self.connect_id.take() {
                self.abandoned_connect = Some(abandoned);
                self.outputs.push_back(Output::Abort(Lane::Connect));
            }
        }
        if batch.is_empty() {
            return;
        }
        ids.extend(batch.iter().filter_map(|m| m.id.clone()));
        self.other_batch = Some(ids);
        self.outputs.push_back(Output::Send {
            lane: Lane::Other,
            messages: batch,
        });
    }
}
