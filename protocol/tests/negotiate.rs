//! NEGOTIATE between builds with different capability sets: each side keeps what both name,
//! unknown names are ignored, and a peer that does not negotiate is held to the base protocol.

mod common;

use common::Pair;
use valkyrie_protocol::features::{FEATURES, FeatureSet};
use valkyrie_protocol::{Config, Event};

fn build(features: &[&str]) -> Config {
    Config {
        features: features.iter().map(|f| f.to_string()).collect(),
        ..Config::new("node")
    }
}

fn negotiated_events(events: &[Event]) -> Vec<FeatureSet> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Negotiated { features } => Some(*features),
            _ => None,
        })
        .collect()
}

#[test]
fn two_builds_use_the_capabilities_both_have() {
    let this: Vec<&str> = FEATURES.iter().map(|f| f.name).collect();
    // An older build knew two of them; a newer one knows one this build does not.
    let older = ["going_away", "stream_open_ack"];
    let mut newer = this.clone();
    newer.push("zstd_frames");
    for (client, server, want) in [
        (&this[..], &older[..], &older[..]),
        (&older[..], &this[..], &older[..]),
        (&newer[..], &this[..], &this[..]),
        (&this[..], &newer[..], &this[..]),
        (&this[..], &this[..], &this[..]),
    ] {
        let mut p = Pair::new(build(client), build(server));
        p.run();
        let want = FeatureSet::from_names(want);
        assert_eq!(
            p.client.negotiated(),
            Some(want),
            "client {client:?} / server {server:?}"
        );
        assert_eq!(p.server.negotiated(), Some(want));
        assert_eq!(negotiated_events(&p.client_events), [want]);
        assert_eq!(negotiated_events(&p.server_events), [want]);
        assert!(
            !want.contains("zstd_frames"),
            "an unknown name is never agreed"
        );
    }
}

#[test]
fn a_client_that_does_not_negotiate_is_held_to_the_base_protocol() {
    let mut p = Pair::new(build(&[]), Config::new("node"));
    p.run();
    assert!(p.client.is_established() && p.server.is_established());
    assert_eq!(p.client.negotiated(), None);
    assert_eq!(p.server.negotiated(), None);
    assert!(negotiated_events(&p.server_events).is_empty());
}
