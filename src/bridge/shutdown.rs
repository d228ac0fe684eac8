//! The bridge's one shutdown signal: the drain advances it step by step, in the order of
//! [`Step`], and each task waits for the step that concerns it ([`Shutdown::signal`]).
//! Steps only move forward, so a task whose step was passed over (it had ended on its own)
//! sees it as reached all the same.

use tokio::sync::watch;

/// The steps of a shutdown, in the order the drain takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Step {
    /// Not shutting down.
    Running,
    /// MQTT → Bayeux stops taking messages (what it did not take stays with the broker).
    StopMqttToBayeux,
    /// Bayeux → MQTT forwards until its subscriptions end, then stops.
    DrainBayeuxToMqtt,
    /// Bayeux → MQTT stops now (the drain deadline); what it still buffers is dropped.
    StopBayeuxToMqtt,
    /// The deliveries from the spool stop (what they did not deliver stays there).
    StopDeliveries,
    /// The periodic checkpoint flush stops (the last flush is the drain's own).
    StopFlusher,
    /// The HTTP listener closes.
    CloseHttp,
}

/// The sending side, held by the bridge's run loop.
#[derive(Debug)]
pub(crate) struct Shutdown {
    step: watch::Sender<Step>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            step: watch::Sender::new(Step::Running),
        }
    }
}

impl Shutdown {
    /// The signal a task waits on: set once the shutdown reached `at`.
    pub(crate) fn signal(&self, at: Step) -> Signal {
        Signal {
            step: self.step.subscribe(),
            at,
        }
    }

    /// Moves the shutdown on to `to` (never back).
    pub(crate) fn advance(&self, to: Step) {
        self.step.send_if_modified(|step| {
            let forward = *step < to;
            if forward {
                *step = to;
            }
            forward
        });
    }
}

/// One task's view of the [`Shutdown`]: whether its step is reached.
#[derive(Debug, Clone)]
pub(crate) struct Signal {
    step: watch::Receiver<Step>,
    at: Step,
}

impl Signal {
    /// Whether the shutdown reached this signal's step.
    pub(crate) fn is_set(&self) -> bool {
        *self.step.borrow() >= self.at
    }

    /// Resolves once the shutdown reached this signal's step (or its sender is gone).
    pub(crate) async fn wait(&mut self) {
        let at = self.at;
        let _ = self.step.wait_for(|step| *step >= at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{Shutdown, Step};

    #[test]
    fn a_signal_is_set_from_its_step_on_and_steps_never_go_back() {
        let shutdown = Shutdown::default();
        let b2m = shutdown.signal(Step::StopBayeuxToMqtt);
        let m2b = shutdown.signal(Step::StopMqttToBayeux);
        assert!(!b2m.is_set() && !m2b.is_set());
        shutdown.advance(Step::StopMqttToBayeux);
        assert!(m2b.is_set() && !b2m.is_set());
        shutdown.advance(Step::CloseHttp);
        assert!(b2m.is_set(), "a step passed over counts as reached");
        shutdown.advance(Step::Running);
        assert!(m2b.is_set() && b2m.is_set(), "never back");
    }

    #[tokio::test]
    async fn waiting_resolves_at_the_step_or_when_the_shutdown_is_gone() {
        let shutdown = Shutdown::default();
        let mut signal = shutdown.signal(Step::DrainBayeuxToMqtt);
        let waiting = tokio::spawn(async move { signal.wait().await });
        shutdown.advance(Step::StopMqttToBayeux);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        shutdown.advance(Step::DrainBayeuxToMqtt);
        assert!(waiting.await.is_ok());
        let mut orphan = shutdown.signal(Step::CloseHttp);
        drop(shutdown);
        orphan.wait().await;
    }
}
