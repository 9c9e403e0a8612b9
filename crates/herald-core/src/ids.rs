//! Connection identifiers in the `\d+\.\d+` shape Pusher clients expect for `socket_id`.

use std::fmt;
use std::str::FromStr;

/// A connection's identity, unique across a cluster with overwhelming probability (two random numbers).
///
/// Kept as two integers so that maps keyed by it hash 16 bytes and never allocate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    hi: u64,
    lo: u64,
}

/// The upper bound (exclusive) of each half; keeps ids short like Pusher's (`123456.7890123`).
const HALF_LIMIT: u64 = 10_000_000_000;

impl SocketId {
    /// A fresh random id.
    pub fn random() -> Self {
        SocketId { hi: fastrand::u64(1..HALF_LIMIT), lo: fastrand::u64(1..HALF_LIMIT) }
    }

    /// The two halves, for compact binary encodings (see [`SocketId::from_parts`]).
    pub fn parts(self) -> (u64, u64) {
        (self.hi, self.lo)
    }

    /// An id from the halves [`SocketId::parts`] returned.
    pub fn from_parts(hi: u64, lo: u64) -> Self {
        SocketId { hi, lo }
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.hi, self.lo)
    }
}

impl fmt::Debug for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text was not two decimal numbers joined by a dot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid socket id {0:?}: expected two numbers joined by a dot")]
pub struct ParseSocketIdError(pub String);

impl FromStr for SocketId {
    type Err = ParseSocketIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseSocketIdError(s.chars().take(64).collect());
        let (hi, lo) = s.split_once('.').ok_or_else(bad)?;
        let digits = |p: &str| !p.is_empty() && p.len() <= 19 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(hi) || !digits(lo) {
            return Err(bad());
        }
        Ok(SocketId { hi: hi.parse().map_err(|_| bad())?, lo: lo.parse().map_err(|_| bad())? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let id = SocketId::random();
        assert_eq!(id.to_string().parse::<SocketId>().unwrap(), id);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in ["", "1", "1.", ".1", "a.b", "1.2.3", "1.-2", "99999999999999999999.1"] {
            assert!(bad.parse::<SocketId>().is_err(), "{bad:?} should be rejected");
        }
        assert_eq!("123.456".parse::<SocketId>().unwrap().to_string(), "123.456");
    }
}
