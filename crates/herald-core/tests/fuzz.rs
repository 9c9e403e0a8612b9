//! Property tests: socket ids, which arrive as text from clients (`socket_id` of a publish or an
//! auth request) and from other nodes, parse to an id or a clean error for any input, and every id
//! Herald hands out survives the trip through text.
//!
//! Cases per property: 512, or `PROPTEST_CASES`. Nothing is persisted: a failure prints the minimal
//! input; `PROPTEST_RNG_SEED` repeats a run.

use herald_core::SocketId;
use proptest::prelude::*;

/// 512 cases per property unless `PROPTEST_CASES` says otherwise; no regression files are written.
fn config() -> ProptestConfig {
    let base = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { base.cases } else { 512 };
    ProptestConfig { cases, failure_persistence: None, ..base }
}

/// The largest half whose text a parse accepts (19 digits).
const MAX_PARSED_HALF: u64 = 9_999_999_999_999_999_999;

/// Text shaped like a socket id, often subtly wrong.
fn near_id() -> impl Strategy<Value = String> {
    let half = prop_oneof![
        "[0-9]{0,21}",
        any::<u64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec!["", "0", "-1", "+1", "1_0", " 1", "1 ", "١٢", "１", "0x1f", "18446744073709551616", "٠"])
            .prop_map(str::to_string),
    ];
    let dot = prop::sample::select(vec![".", "", "..", ",", "·", ". "]);
    (half.clone(), dot, half, prop::option::of(".{0,3}")).prop_map(|(a, d, b, tail)| format!("{a}{d}{b}{}", tail.unwrap_or_default()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn socket_id_parse_never_panics_on_random_text(text in prop_oneof![".{0,48}", near_id()]) {
        match text.parse::<SocketId>() {
            Ok(id) => {
                let (hi, lo) = text.split_once('.').unwrap();
                let digits = |p: &str| (1..=19).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
                prop_assert!(digits(hi) && digits(lo), "accepted {text:?}");
                prop_assert_eq!(id.parts(), (hi.parse::<u64>().unwrap(), lo.parse::<u64>().unwrap()));
                // Leading zeros are dropped; the canonical text parses to the same id.
                prop_assert_eq!(id.to_string().parse::<SocketId>(), Ok(id));
            }
            Err(e) => prop_assert!(e.0.chars().count() <= 64, "the error echoes at most 64 characters"),
        }
    }

    #[test]
    fn socket_id_parse_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = String::from_utf8_lossy(&bytes).parse::<SocketId>();
    }

    #[test]
    fn socket_ids_round_trip_through_text(hi in 0..=MAX_PARSED_HALF, lo in 0..=MAX_PARSED_HALF) {
        let id = SocketId::from_parts(hi, lo);
        prop_assert_eq!(id.to_string().parse::<SocketId>(), Ok(id));
        prop_assert_eq!(format!("{id:?}"), format!("{hi}.{lo}"));
        prop_assert_eq!(SocketId::from_parts(id.parts().0, id.parts().1), id);
    }

    #[test]
    fn random_socket_ids_round_trip_through_text(_n in 0..1u8) {
        let id = SocketId::random();
        let (hi, lo) = id.parts();
        prop_assert!(hi > 0 && lo > 0);
        prop_assert_eq!(id.to_string().parse::<SocketId>(), Ok(id));
    }

    #[test]
    fn halves_beyond_nineteen_digits_are_refused(hi in MAX_PARSED_HALF + 1.., lo in any::<u64>()) {
        // `from_parts` accepts any u64 (binary encodings), but the text form of a half of 20 digits
        // does not parse back: the parser caps each half at 19 digits.
        let (high_first, low_first) = (format!("{hi}.{lo}"), format!("{lo}.{hi}"));
        prop_assert!(high_first.parse::<SocketId>().is_err(), "accepted {}", high_first);
        prop_assert!(low_first.parse::<SocketId>().is_err(), "accepted {}", low_first);
    }
}
