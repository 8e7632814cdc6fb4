//! Property tests of the parsers that face the network or the command line: any input gives
//! a value or a typed error, never a panic, and valid values round-trip.

use neulbi_domain::{StreamKind, StreamName};
use proptest::prelude::*;
use uuid::Uuid;

proptest! {
    #[test]
    fn stream_names_never_panic(s in ".{0,200}") {
        let _ = s.parse::<StreamName>();
    }

    #[test]
    fn near_miss_stream_names_are_rejected_or_round_trip(kind in "(user|room|call|chat|)", sep in "[-_ ]?", id in "[0-9a-f-]{0,40}") {
        let s = format!("{kind}{sep}{id}");
        if let Ok(name) = s.parse::<StreamName>() {
            // Whatever parses prints back as a canonical name that parses to the same value.
            prop_assert_eq!(name.to_string().parse::<StreamName>(), Ok(name));
        }
    }

    #[test]
    fn valid_stream_names_round_trip(k in 0usize..3, id in any::<u128>()) {
        let name = StreamName::new(StreamKind::ALL[k], Uuid::from_u128(id));
        prop_assert_eq!(name.to_string().parse::<StreamName>(), Ok(name));
    }
}
