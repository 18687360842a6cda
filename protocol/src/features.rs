//! Named capabilities: what a build of the protocol does beyond the fixed parts of the wire
//! format, exchanged in NEGOTIATE so that builds of different minor versions talk using what
//! both have (docs/PROTOCOL.md §4.6).
//!
//! The connecting side sends NEGOTIATE `{"features": [names]}` once it is established; the
//! accepting side answers NEGOTIATE with its own list (RESPONSE set, same correlation id).
//! Each side then uses the features both lists name. A name a build does not know is
//! ignored, so a newer peer's extra features simply go unused; a peer that never negotiates
//! is held to the base protocol.
//!
//! ```
//! use valkyrie_protocol::features::FeatureSet;
//!
//! // This build, and a next minor version that knows one feature more.
//! let ours = FeatureSet::from_names(["going_away", "stream_open_ack", "reset_confirm"]);
//! let theirs = ["going_away", "stream_open_ack", "zstd_frames"];
//! let agreed = ours.intersect(&FeatureSet::from_names(theirs));
//! assert!(agreed.contains("going_away"));
//! assert!(!agreed.contains("reset_confirm"), "they lack it");
//! assert_eq!(agreed.names().count(), 2, "an unknown name is not carried");
//! ```

/// One capability: its name on the wire, and what a peer may rely on once both have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// The name in NEGOTIATE (snake_case).
    pub name: &'static str,
    /// What it means.
    pub meaning: &'static str,
}

/// Every capability this build knows, in a fixed order (a set is a bitmask over it; at most
/// 31 entries).
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "going_away",
        meaning: "CLOSE 502 means the node drains: connect again at once, elsewhere, and send again the requests it did not answer",
    },
    Feature {
        name: "stream_open_ack",
        meaning: "STREAM_OPEN is answered by STREAM_ACK (RESPONSE, same correlation id) carrying the opener's credit",
    },
    Feature {
        name: "reset_confirm",
        meaning: "STREAM_RESET is confirmed by a STREAM_RESET with RESPONSE set; the id is reused only after it",
    },
    Feature {
        name: "credit_updates",
        meaning: "received stream bytes are returned as credit by STREAM_ACK max_data, the window adapting to the round trip",
    },
    Feature {
        name: "ack_received",
        meaning: "a STREAM_ACK answering a frame sent with ACK carries the bytes received on its stream so far",
    },
];

/// The bit of `name` in a [`FeatureSet`], when this build knows it.
fn bit(name: &str) -> Option<u32> {
    FEATURES.iter().position(|f| f.name == name).map(|i| 1 << i)
}

/// A set of the capabilities this build knows (names it does not know are left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FeatureSet(u32);

impl FeatureSet {
    /// Every capability this build has.
    pub fn all() -> FeatureSet {
        FeatureSet((1u32 << FEATURES.len()) - 1)
    }

    /// The known names among `names`.
    pub fn from_names<I, S>(names: I) -> FeatureSet
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        FeatureSet(
            names
                .into_iter()
                .filter_map(|n| bit(n.as_ref()))
                .fold(0, |acc, b| acc | b),
        )
    }

    /// What both sets have.
    pub fn intersect(&self, other: &FeatureSet) -> FeatureSet {
        FeatureSet(self.0 & other.0)
    }

    /// Whether the set has the capability called `name`.
    pub fn contains(&self, name: &str) -> bool {
        bit(name).is_some_and(|b| self.0 & b != 0)
    }

    /// The names in the set, in [`FEATURES`] order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        FEATURES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, f)| f.name)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub(crate) fn bits(&self) -> u32 {
        self.0
    }

    pub(crate) fn from_bits(bits: u32) -> FeatureSet {
        FeatureSet(bits & FeatureSet::all().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_fits_a_set_and_names_are_unique_snake_case() {
        assert!(FEATURES.len() < 32);
        for (i, f) in FEATURES.iter().enumerate() {
            assert!(f.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            assert!(FEATURES[..i].iter().all(|g| g.name != f.name));
        }
        assert_eq!(FeatureSet::all().names().count(), FEATURES.len());
    }
}
