//! Presence membership of one channel: users, their info, and how many of their connections are in.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::SubscribeError;

/// One member of a presence channel as the engine sees it: an id and opaque info bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user's id.
    pub user_id: Arc<str>,
    /// The user's info, as the front encoded it (the first connection's info wins).
    pub info: Bytes,
}

#[derive(Default)]
pub(crate) struct Presence {
    members: HashMap<Arc<str>, (Bytes, u32)>,
}

impl Presence {
    /// Adds one connection of `user`. Returns true when this is the user's first connection.
    pub(crate) fn join(&mut self, user: &Arc<str>, info: &Bytes, max_members: usize) -> Result<bool, SubscribeError> {
        if let Some((_, conns)) = self.members.get_mut(user) {
            *conns += 1;
            return Ok(false);
        }
        if self.members.len() >= max_members {
            return Err(SubscribeError::TooManyMembers { limit: max_members });
        }
        self.members.insert(user.clone(), (info.clone(), 1));
        Ok(true)
    }

    /// Removes one connection of `user`. Returns true when it was the user's last.
    pub(crate) fn leave(&mut self, user: &str) -> bool {
        match self.members.get_mut(user) {
            Some((_, conns)) if *conns > 1 => {
                *conns -= 1;
                false
            }
            Some(_) => {
                self.members.remove(user);
                true
            }
            None => false,
        }
    }

    pub(crate) fn info(&self, user: &str) -> Option<Bytes> {
        self.members.get(user).map(|(info, _)| info.clone())
    }

    pub(crate) fn user_count(&self) -> usize {
        self.members.len()
    }

    pub(crate) fn snapshot(&self) -> Vec<Member> {
        self.members.iter().map(|(id, (info, _))| Member { user_id: id.clone(), info: info.clone() }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_connections_per_user() {
        let mut p = Presence::default();
        let alice: Arc<str> = Arc::from("alice");
        let info = Bytes::from("{}");
        assert!(p.join(&alice, &info, 10).unwrap());
        assert!(!p.join(&alice, &info, 10).unwrap(), "second tab is not a new member");
        assert_eq!(p.user_count(), 1);
        assert!(!p.leave("alice"), "one tab left");
        assert!(p.leave("alice"), "last tab left");
        assert_eq!(p.user_count(), 0);
        assert!(!p.leave("alice"), "unknown user leaving is a no-op");
    }

    #[test]
    fn member_limit_counts_users_not_connections() {
        let mut p = Presence::default();
        let info = Bytes::new();
        let a: Arc<str> = Arc::from("a");
        p.join(&a, &info, 1).unwrap();
        p.join(&a, &info, 1).unwrap();
        assert_eq!(p.join(&Arc::from("b"), &info, 1), Err(SubscribeError::TooManyMembers { limit: 1 }));
    }
}
