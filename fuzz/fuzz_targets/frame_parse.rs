//! `frame_parse`: any WebSocket text frame, read by both sides.
//!
//! The broker side runs the connection task's own parser (`conn.rs`, before and after a
//! hello) and requires its refusal to be a well-formed `error` frame; a parsed client
//! frame must survive a serialize/parse round trip. The client side parses the same text
//! as a broker frame (as the client's connection actor does), round-trips it, and opens a
//! `push` with bob's key, so a hostile broker's frames reach the envelope code too.

#![no_main]

use claudemesh_broker::fuzzing::parse_frame;
use claudemesh_client::envelope::{self, Incoming};
use claudemesh_proto::frames::{BrokerFrame, ClientFrame, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 by the WebSocket layer's own check; others never get here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    broker_side(text);
    client_side(text);
});

fn broker_side(text: &str) {
    for attached in [false, true] {
        match parse_frame(text, attached) {
            Ok(frame) => {
                let _ = frame.kind();
                let _ = frame.req_id();
                if let ClientFrame::Send(send) = &frame {
                    let _ = Target::parse(&send.target_spec).map(|t| t.is_multicast());
                }
                let again: ClientFrame =
                    serde_json::from_str(&serde_json::to_string(&frame).unwrap())
                        .expect("a parsed client frame does not parse after serializing");
                assert_eq!(again, frame, "client frame changed in a round trip");
            }
            Err(reply) => match serde_json::from_str::<BrokerFrame>(&reply) {
                Ok(BrokerFrame::Error(_)) => {}
                other => panic!("the broker's refusal is not an error frame: {other:?}"),
            },
        }
    }
}

fn client_side(text: &str) {
    let Ok(frame) = serde_json::from_str::<BrokerFrame>(text) else {
        return;
    };
    let _ = frame.req_id();
    let again: BrokerFrame = serde_json::from_str(&serde_json::to_string(&frame).unwrap())
        .expect("a parsed broker frame does not parse after serializing");
    assert_eq!(again, frame, "broker frame changed in a round trip");
    match &frame {
        BrokerFrame::Push(push) => {
            let _ = envelope::open(&claudemesh_fuzz::BOB, &Incoming::from(push));
        }
        BrokerFrame::Ack(ack) => {
            // The client actor's reading of its own send ids.
            let _ = ack.id.strip_prefix('s').and_then(|n| n.parse::<u64>().ok());
        }
        _ => {}
    }
}
