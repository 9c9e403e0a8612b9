//! Signed-in users: every connection (device) of one user, and delivery to them.

use std::sync::Arc;

use crate::broker::{Remote, Topic};
use crate::codec::Encoded;
use crate::command::{CommandError, UserCommand};
use crate::error::SignInError;
use crate::ids::SocketId;
use crate::outbox::{Claimed, Disconnect};
use crate::publication::Publication;

use super::{ConfirmError, Hub, Published};

impl Hub {
    /// Signs `socket` in as `user_id`, from `device` if the front knows it, so it receives that user's
    /// messages (except those that exclude its device). The device also applies to the connection's
    /// channel subscriptions.
    pub fn sign_in(&self, socket: SocketId, user_id: &str, device: Option<&str>) -> Result<(), SignInError> {
        let user: Arc<str> = Arc::from(user_id);
        let outbox = {
            let conn = self.connections.get(&socket).ok_or(SignInError::UnknownConnection)?;
            match &conn.user {
                Some(existing) if **existing == *user_id => return Ok(()),
                Some(_) => return Err(SignInError::AlreadySignedIn),
                None => {}
            }
            conn.outbox.clone()
        };
        // Checked and taken under the user's entry lock, so two racing sign-ins can't both pass.
        let first = {
            let mut sockets = self.users.entry(user.clone()).or_default();
            if let Some(limit) = self.app.limits.max_connections_per_user {
                if sockets.len() >= limit {
                    let empty = sockets.is_empty();
                    drop(sockets);
                    if empty {
                        self.users.remove_if(&user, |_, s| s.is_empty());
                    }
                    return Err(SignInError::TooManyConnections { limit });
                }
            }
            sockets.push((socket, outbox.clone()));
            sockets.len() == 1
        };
        match self.connections.get_mut(&socket) {
            Some(mut conn) => conn.user = Some(user.clone()),
            None => {
                // Disconnected meanwhile (only its own task signs it in, so this is a race with a
                // terminate): take the entry back.
                self.users.remove_if_mut(&user, |_, s| {
                    s.retain(|(id, _)| *id != socket);
                    s.is_empty()
                });
                return Err(SignInError::UnknownConnection);
            }
        }
        // The device is the connection's, so its channel subscriptions (which share the outbox) see it.
        if let Some(device) = device {
            outbox.set_device(Arc::from(device));
        }
        if first {
            self.interest_changed(Topic::User(user));
        }
        Ok(())
    }

    /// The user `socket` is signed in as.
    pub fn user_of(&self, socket: SocketId) -> Option<Arc<str>> {
        self.connections.get(&socket).and_then(|c| c.user.clone())
    }

    /// Queues `publication` to every connection signed in as `user_id`, on every node, except its
    /// excluded connection and device. Returns how many local connections got it.
    pub fn publish_to_user(&self, user_id: &str, publication: &Publication) -> usize {
        self.stats.published();
        self.broadcast(|| Topic::User(Arc::from(user_id)), || Remote::Publish { publication: publication.clone() });
        self.deliver_to_user(user_id, publication)
    }

    /// Like [`Hub::publish_to_user`], at most once per `idempotency_key` within the window (a repeat
    /// is accepted and not delivered): for bus consumers that ack only what was accepted.
    pub async fn publish_to_user_confirmed(
        &self,
        user_id: &str,
        publication: &Publication,
        idempotency_key: Option<&str>,
    ) -> Result<Published, ConfirmError> {
        if let Some(key) = idempotency_key {
            if let Some(sent) = self.publish_once(|| Topic::User(Arc::from(user_id)), publication, key).await {
                if !sent? {
                    return Ok(Published::Repeat);
                }
                self.deliver_to_user(user_id, publication);
                return Ok(Published::Delivered { position: None });
            }
            if !self.first_seen(key).await? {
                return Ok(Published::Repeat);
            }
        }
        self.publish_to_user(user_id, publication);
        Ok(Published::Delivered { position: None })
    }

    pub(super) fn deliver_to_user(&self, user_id: &str, publication: &Publication) -> usize {
        // Declared first, so the claimed outboxes are written after the map guard is gone.
        let mut claimed = Claimed::default();
        let Some(sockets) = self.users.get(user_id) else { return 0 };
        let mut encoded = Encoded::new(&self.codecs, |codec| codec.publication(publication));
        self.push_all(
            sockets.iter().map(|(id, outbox)| (id, outbox)),
            publication.except,
            publication.except_device.as_deref(),
            &mut encoded,
            &mut claimed,
            None,
        )
    }

    /// Asks every connection signed in as `user_id`, on every node, to close. Returns how many local
    /// ones were asked.
    pub fn terminate_user(&self, user_id: &str) -> usize {
        self.broadcast(|| Topic::User(Arc::from(user_id)), || Remote::Terminate);
        self.terminate_local(user_id)
    }

    pub(super) fn terminate_local(&self, user_id: &str) -> usize {
        let Some(sockets) = self.users.get(user_id) else { return 0 };
        sockets.iter().for_each(|(_, outbox)| outbox.close(Disconnect::Terminated));
        sockets.len()
    }

    /// Hands `command` to the targeted connections of `user_id`, on every node (their fronts act on
    /// it; see [`crate::UserCommand`]). Returns how many local connections took it; refused when the
    /// command is out of bounds ([`UserCommand::check`]).
    pub fn command_user(&self, user_id: &str, command: UserCommand) -> Result<usize, CommandError> {
        command.check()?;
        let local = self.command_local(user_id, &command);
        // A command for one connection found here goes nowhere else (connection ids are unique).
        if command.only.is_none() || local == 0 {
            self.broadcast(|| Topic::User(Arc::from(user_id)), || Remote::Command(command));
        }
        Ok(local)
    }

    pub(super) fn command_local(&self, user_id: &str, command: &UserCommand) -> usize {
        // Outboxes are collected first: no map guard is held while fronts' queues are touched.
        let targets: Vec<_> = match self.users.get(user_id) {
            Some(sockets) => sockets.iter().filter(|(id, _)| command.targets(*id)).map(|(_, outbox)| outbox.clone()).collect(),
            None => return 0,
        };
        targets.iter().filter(|outbox| outbox.command(command.action.clone())).count()
    }
}
