//! Pusher channel names and what their prefixes mean.

/// The longest channel name accepted (Pusher's documented limit).
pub const MAX_CHANNEL_NAME: usize = 164;

/// The prefix of the per-user channel a signed-in pusher-js subscribes to.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";
/// Longest user id (presence `user_id`, sign-in `id`, API user paths): what fits a user channel name.
pub const MAX_USER_ID: usize = MAX_CHANNEL_NAME;

/// What a channel name's prefix makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelKind {
    /// What a subscriber must present.
    pub access: Access,
    /// `cache-` variants: the last event is replayed on subscribe.
    pub cache: bool,
}

/// Who may subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// A signature over `socket_id:channel`.
    Private,
    /// `private-encrypted-`: like private; the server only ever relays ciphertext.
    Encrypted,
    /// A signature over `socket_id:channel:channel_data`, with member data.
    Presence,
    /// `#server-to-user-{id}`: only the connection signed in as `id`.
    User,
}

impl ChannelKind {
    /// Classifies a channel by prefix.
    pub fn of(name: &str) -> ChannelKind {
        let (access, rest) = if let Some(rest) = name.strip_prefix("private-encrypted-") {
            (Access::Encrypted, rest)
        } else if let Some(rest) = name.strip_prefix("private-") {
            (Access::Private, rest)
        } else if let Some(rest) = name.strip_prefix("presence-") {
            (Access::Presence, rest)
        } else if name.starts_with(USER_CHANNEL_PREFIX) {
            (Access::User, "")
        } else {
            (Access::Public, name)
        };
        ChannelKind { access, cache: rest.starts_with("cache-") }
    }

    /// Whether clients may send `client-*` events here (private and presence, not encrypted).
    pub fn allows_client_events(self) -> bool {
        matches!(self.access, Access::Private | Access::Presence)
    }
}

/// Whether `name` is a valid channel name (characters and length as Pusher allows).
pub fn is_valid_name(name: &str) -> bool {
    is_valid_name_within(name, MAX_CHANNEL_NAME)
}

/// Whether `name` is a valid channel name of at most `max` bytes (an app's `max_channel_name`; user
/// channels may add their prefix to it, their user id stays within [`MAX_USER_ID`]).
pub fn is_valid_name_within(name: &str, max: usize) -> bool {
    if let Some(user) = name.strip_prefix(USER_CHANNEL_PREFIX) {
        return !user.is_empty() && user.len() <= MAX_USER_ID && name.len() <= max + USER_CHANNEL_PREFIX.len();
    }
    !name.is_empty() && name.len() <= max && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=@,.;".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        let k = |n| ChannelKind::of(n);
        assert_eq!(k("news"), ChannelKind { access: Access::Public, cache: false });
        assert_eq!(k("cache-news"), ChannelKind { access: Access::Public, cache: true });
        assert_eq!(k("private-a"), ChannelKind { access: Access::Private, cache: false });
        assert_eq!(k("private-cache-a"), ChannelKind { access: Access::Private, cache: true });
        assert_eq!(k("private-encrypted-a"), ChannelKind { access: Access::Encrypted, cache: false });
        assert_eq!(k("private-encrypted-cache-a"), ChannelKind { access: Access::Encrypted, cache: true });
        assert_eq!(k("presence-room"), ChannelKind { access: Access::Presence, cache: false });
        assert_eq!(k("presence-cache-room"), ChannelKind { access: Access::Presence, cache: true });
        assert_eq!(k("#server-to-user-42").access, Access::User);
        assert!(k("private-a").allows_client_events());
        assert!(!k("private-encrypted-a").allows_client_events());
        assert!(!k("news").allows_client_events());
    }

    #[test]
    fn validates_names() {
        assert!(is_valid_name("private-chat.room-1_a=b@c,d;e"));
        assert!(is_valid_name("#server-to-user-42"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("has space"));
        assert!(!is_valid_name("#other"));
        assert!(!is_valid_name(&"x".repeat(MAX_CHANNEL_NAME + 1)));
        assert!(is_valid_name_within("abcd", 4) && !is_valid_name_within("abcde", 4));
        assert!(is_valid_name_within(&"x".repeat(300), 300));
    }
}
