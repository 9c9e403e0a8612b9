//! User commands (refresh, unsubscribe, disconnect) for the connection's task: the outbox holds the
//! connection's inbox because it is what every subscription already shares with that task.

use std::sync::Arc;

use super::{Disconnect, Outbox};
use crate::command::{CommandInbox, Commands, UserAction};

impl Outbox {
    /// Makes this connection receive the user commands meant for it ([`crate::UserCommand`]); the
    /// connection's task waits on the returned inbox. Only the first call gets one.
    pub fn accept_commands(&self) -> Option<CommandInbox> {
        let commands = Arc::new(Commands::default());
        self.inner.commands.set(commands.clone()).ok()?;
        Some(CommandInbox { commands })
    }

    /// Hands `action` to the connection's task. Without an inbox, a disconnect closes the connection
    /// ([`Disconnect::Terminated`]) and anything else is ignored (false). A full inbox closes the
    /// connection as a slow consumer.
    pub(crate) fn command(&self, action: UserAction) -> bool {
        let Some(commands) = self.inner.commands.get() else {
            if matches!(action, UserAction::Disconnect { .. }) {
                self.close(Disconnect::Terminated);
                return true;
            }
            return false;
        };
        if self.is_closed() {
            return false;
        }
        if !commands.push(action) {
            metrics::counter!("herald_slow_consumer_disconnects_total", "reason" => "commands").increment(1);
            self.close(Disconnect::SlowConsumer);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::limits;
    use super::super::Drained;
    use super::*;

    #[tokio::test]
    async fn commands_reach_the_inbox_in_order_and_a_full_inbox_closes_as_a_slow_consumer() {
        use crate::command::MAX_PENDING_COMMANDS;
        let outbox = Outbox::new(limits(10, 1000));
        let inbox = outbox.accept_commands().unwrap();
        let refresh = |at| UserAction::Refresh { expire_at: Some(at), expired: false };
        for at in 0..MAX_PENDING_COMMANDS as u64 {
            assert!(outbox.command(refresh(at)));
        }
        assert_eq!(inbox.next().await, refresh(0));
        assert!(outbox.command(refresh(99)), "room again after one was taken");
        assert!(!outbox.command(refresh(100)), "full");
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Closed(Disconnect::SlowConsumer));
        assert!(!outbox.command(refresh(101)), "a closed connection takes no commands");
        assert_eq!(inbox.try_next(), Some(refresh(1)), "what was queued stays in order");
    }

    #[tokio::test]
    async fn without_an_inbox_only_a_disconnect_does_anything() {
        let outbox = Outbox::new(limits(10, 1000));
        assert!(!outbox.command(UserAction::Unsubscribe { channel: Arc::from("news") }));
        assert!(!outbox.is_closed());
        assert!(outbox.command(UserAction::Disconnect { code: 4000, reason: Arc::from("bye") }));
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out).await, Drained::Closed(Disconnect::Terminated));
    }
}
