//! Subscriptions: the set kept across session loss, subscribe/unsubscribe requests and their
//! SUBACK/UNSUBACK (see the parent module).

use tracing::{debug, error};

use super::{Replay, Reply, Request, Tracker};
use crate::mqtt::error::MqttError;
use crate::mqtt::{MqttEvent, SubscriptionSpec};

/// A subscribe or unsubscribe request being tracked until its SUBACK/UNSUBACK.
pub(super) enum Control {
    Subscribe {
        seq: u64,
        specs: Vec<SubscriptionSpec>,
    },
    Unsubscribe {
        seq: u64,
        filter: String,
    },
}

impl Control {
    fn seq(&self) -> u64 {
        match self {
            Control::Subscribe { seq, .. } | Control::Unsubscribe { seq, .. } => *seq,
        }
    }

    fn replay(&self) -> Replay {
        match self {
            Control::Subscribe { specs, .. } => Replay::Subscribe(specs.clone()),
            Control::Unsubscribe { filter, .. } => Replay::Unsubscribe(filter.clone()),
        }
    }
}

impl Tracker {
    /// Adds (or replaces, by filter) a subscription and requests it now.
    pub(in crate::mqtt) fn enqueue_subscribe(
        &mut self,
        spec: SubscriptionSpec,
        reply: Reply,
    ) -> Result<(), MqttError> {
        if self.closing || self.stopped {
            return Err(MqttError::Shutdown);
        }
        self.upsert_subscription(spec.clone());
        self.subscribe_waiters
            .entry(spec.filter.clone())
            .or_default()
            .push(reply);
        let seq = self.take_seq();
        self.controls.push_back(Control::Subscribe {
            seq,
            specs: vec![spec.clone()],
        });
        self.send(Request::Subscribe(vec![spec]));
        Ok(())
    }

    /// Removes a subscription and requests the unsubscription now.
    pub(in crate::mqtt) fn enqueue_unsubscribe(
        &mut self,
        filter: String,
        reply: Reply,
    ) -> Result<(), MqttError> {
        if self.closing || self.stopped {
            return Err(MqttError::Shutdown);
        }
        self.subscriptions.retain(|s| s.filter != filter);
        self.unsubscribe_waiters
            .entry(filter.clone())
            .or_default()
            .push(reply);
        let seq = self.take_seq();
        self.controls.push_back(Control::Unsubscribe {
            seq,
            filter: filter.clone(),
        });
        self.send(Request::Unsubscribe(filter));
        Ok(())
    }

    pub(super) fn upsert_subscription(&mut self, spec: SubscriptionSpec) {
        match self
            .subscriptions
            .iter_mut()
            .find(|s| s.filter == spec.filter)
        {
            Some(existing) => *existing = spec,
            None => self.subscriptions.push(spec),
        }
    }

    pub(super) fn pop_control(&mut self) -> Option<Control> {
        let control = self.controls.pop_front();
        if control.is_none() {
            error!("Internal error: rumqttc sent a (un)subscription that was not queued here.");
        }
        self.controls_held = self.controls_held.saturating_sub(1);
        control
    }

    pub(super) fn replace_controls_with_full_subscription(&mut self, replays: &mut Vec<Replay>) {
        // Requests of the lost session no longer matter: the full set replaces them.
        let dropped: Vec<Control> = self
            .controls
            .drain(..self.controls_held.min(self.controls.len()))
            .chain(self.controls_bound.drain().map(|(_, c)| c))
            .collect();
        self.controls_held = 0;
        for control in dropped {
            if let Control::Unsubscribe { filter, .. } = control {
                self.resolve(false, &filter, Ok(()));
            }
        }
        let superseded: Vec<String> = self
            .subscribe_waiters
            .keys()
            .filter(|f| !self.subscriptions.iter().any(|s| &s.filter == *f))
            .cloned()
            .collect();
        for filter in superseded {
            self.resolve(true, &filter, Ok(()));
        }
        if !self.subscriptions.is_empty() {
            let seq = self.take_seq();
            let specs = self.subscriptions.clone();
            self.controls.push_front(Control::Subscribe {
                seq,
                specs: specs.clone(),
            });
            self.controls_held = 1;
            replays.push(Replay::Subscribe(specs));
        }
    }

    /// With a session: (un)subscriptions not confirmed yet are sent again.
    pub(super) fn replay_controls(&mut self, replays: &mut Vec<Replay>) {
        let mut bound: Vec<Control> = self.controls_bound.drain().map(|(_, c)| c).collect();
        bound.sort_by_key(Control::seq);
        for control in bound.into_iter().rev() {
            self.controls.push_front(control);
            self.controls_held += 1;
        }
        self.controls_held = self.controls_held.min(self.controls.len());
        replays.extend(
            self.controls
                .iter()
                .take(self.controls_held)
                .map(Control::replay),
        );
    }

    pub(super) fn on_suback(
        &mut self,
        pkid: u16,
        codes: Vec<Result<(), String>>,
        out: &mut Vec<MqttEvent>,
    ) {
        let specs = match self.controls_bound.remove(&pkid) {
            Some(Control::Subscribe { specs, .. }) => specs,
            other => {
                debug!(pkid, "SUBACK for no subscription in flight.");
                if let Some(control) = other {
                    self.controls_bound.insert(pkid, control);
                }
                return;
            }
        };
        for (index, spec) in specs.into_iter().enumerate() {
            let code = codes
                .get(index)
                .cloned()
                .unwrap_or_else(|| Err("the SUBACK has no reason code for it".to_owned()));
            match code {
                Ok(()) => {
                    self.resolve(true, &spec.filter, Ok(()));
                    out.push(MqttEvent::Subscribed {
                        filter: spec.filter,
                    });
                }
                Err(reason) => {
                    let error = MqttError::SubscribeRefused {
                        filter: spec.filter.clone(),
                        reason: reason.clone(),
                    };
                    self.resolve(true, &spec.filter, Err(error));
                    out.push(MqttEvent::SubscribeFailed {
                        filter: spec.filter,
                        reason,
                    });
                }
            }
        }
    }

    pub(super) fn on_unsuback(&mut self, pkid: u16, failure: Option<String>) {
        let filter = match self.controls_bound.remove(&pkid) {
            Some(Control::Unsubscribe { filter, .. }) => filter,
            other => {
                debug!(pkid, "UNSUBACK for no unsubscription in flight.");
                if let Some(control) = other {
                    self.controls_bound.insert(pkid, control);
                }
                return;
            }
        };
        let result = match failure {
            None => Ok(()),
            Some(reason) => Err(MqttError::UnsubscribeRefused {
                filter: filter.clone(),
                reason,
            }),
        };
        self.resolve(false, &filter, result);
    }

    fn resolve(&mut self, subscribe: bool, filter: &str, result: Result<(), MqttError>) {
        let waiters = if subscribe {
            &mut self.subscribe_waiters
        } else {
            &mut self.unsubscribe_waiters
        };
        for reply in waiters.remove(filter).unwrap_or_default() {
            let _ = reply.send(result.clone());
        }
    }
}
