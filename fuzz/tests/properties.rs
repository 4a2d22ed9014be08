//! Property tests of the wire decoders: every frame and content, with arbitrary Unicode text,
//! arbitrary bytes and extreme numbers, survives encode -> decode unchanged; the typed encoders
//! give the generic encoder's bytes; the gateway's `is_closed` agrees with a full decode.

#![allow(clippy::unwrap_used)] // test code: a failed encode is a test failure

use candid::Principal;
use ic_ws_gateway::codec;
use ic_ws_protocol::types::*;
use ic_ws_protocol::{decode, encode, ClientFrame, GatewayFrame, TypedEncoder};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

fn principal() -> impl Strategy<Value = Principal> {
    vec(any::<u8>(), 0..=29).prop_map(|b| Principal::from_slice(&b))
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..96)
}

/// Any Unicode text, including multi-byte characters and control characters.
fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

fn ws_error() -> impl Strategy<Value = WsError> {
    prop_oneof![
        Just(WsError::InvalidSignature),
        Just(WsError::MalformedKey),
        any::<u64>().prop_map(WsError::UnknownClient),
        Just(WsError::WrongGateway),
        Just(WsError::GatewayMismatch),
        Just(WsError::AnonymousGateway),
        (any::<u64>(), any::<u64>())
            .prop_map(|(expected, got)| WsError::OutOfSequence { expected, got }),
        Just(WsError::StaleOpen),
        any::<u64>().prop_map(|first_available| WsError::ResumeUnavailable { first_available }),
        Just(WsError::InvalidResume),
        text().prop_map(WsError::Rejected),
        text().prop_map(WsError::DecodeError),
        (any::<u64>(), any::<u64>()).prop_map(|(size, limit)| WsError::TooLarge { size, limit }),
        text().prop_map(WsError::LimitReached),
        Just(WsError::Closed),
        text().prop_map(WsError::InvalidArgument),
    ]
}

fn message_kind() -> impl Strategy<Value = MessageKind> {
    prop_oneof![
        bytes().prop_map(MessageKind::App),
        Just(MessageKind::KeepAlive),
        (any::<u16>(), text()).prop_map(|(code, reason)| MessageKind::Close { code, reason }),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let open = (
        principal(),
        bytes(),
        principal(),
        any::<u64>(),
        option::of((any::<u64>(), any::<u64>())),
        bytes(),
        bytes(),
    )
        .prop_map(
            |(canister_id, client_key, gateway, timestamp_ns, resume, args, signature)| {
                ClientFrame::Open {
                    canister_id,
                    request: OpenRequest {
                        client_key,
                        gateway,
                        timestamp_ns,
                        resume: resume.map(|(client_id, next_outbound_seq)| ResumeFrom {
                            client_id,
                            next_outbound_seq,
                        }),
                        args,
                        signature,
                        identity: None,
                    },
                }
            },
        );
    let message = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        message_kind(),
        bytes(),
    )
        .prop_map(|(client_id, seq, ack, kind, signature)| {
            ClientFrame::Message(ClientMessage {
                client_id,
                seq,
                ack,
                kind,
                signature,
            })
        });
    prop_oneof![open, message]
}

fn outbound_message() -> impl Strategy<Value = OutboundMessage> {
    (any::<u64>(), any::<u64>(), bytes()).prop_map(|(client_id, seq, content)| OutboundMessage {
        client_id,
        seq,
        content,
    })
}

fn gateway_frame() -> impl Strategy<Value = GatewayFrame> {
    let open_result = prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(client_id, next_inbound_seq, opened_seq)| Ok(OpenOk {
                client_id,
                next_inbound_seq,
                opened_seq,
            })
        ),
        ws_error().prop_map(Err),
    ];
    prop_oneof![
        (principal(), any::<u32>()).prop_map(|(gateway, protocol_version)| GatewayFrame::Hello {
            gateway,
            protocol_version
        }),
        open_result.prop_map(GatewayFrame::OpenResult),
        (vec(outbound_message(), 0..4), bytes(), bytes()).prop_map(
            |(messages, certificate, tree)| GatewayFrame::Messages {
                messages,
                certificate,
                tree,
            }
        ),
        (any::<u64>(), ws_error())
            .prop_map(|(seq, error)| GatewayFrame::MessageError { seq, error }),
    ]
}

fn close_reason() -> impl Strategy<Value = CloseReason> {
    prop_oneof![
        (any::<u16>(), text())
            .prop_map(|(code, reason)| CloseReason::ClientClosed { code, reason }),
        (any::<u16>(), text()).prop_map(|(code, reason)| CloseReason::AppClosed { code, reason }),
        Just(CloseReason::Expired),
        Just(CloseReason::QueueOverflow),
        text().prop_map(CloseReason::ProtocolError),
    ]
}

fn content() -> impl Strategy<Value = OutboundContent> {
    let body = prop_oneof![
        (option::of(text()), bytes())
            .prop_map(|(topic, payload)| OutboundBody::App { topic, payload }),
        (bytes(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(client_key, open_timestamp_ns, next_inbound_seq, resumed)| OutboundBody::Opened {
                client_key,
                open_timestamp_ns,
                next_inbound_seq,
                resumed,
                max_inbound_payload_bytes: 64 * 1024,
                idle_timeout_ns: 120_000_000_000,
                principal: None,
            }
        ),
        close_reason().prop_map(|reason| OutboundBody::Closed { reason }),
    ];
    (any::<u64>(), body).prop_map(|(timestamp_ns, body)| OutboundContent { timestamp_ns, body })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let bytes = encode(&frame).unwrap();
        prop_assert_eq!(decode::<ClientFrame>(&bytes).unwrap(), frame.clone());
        prop_assert_eq!(TypedEncoder::<ClientFrame>::new().unwrap().encode(&frame).unwrap(), bytes);
        // A client frame is never mistaken for a gateway frame.
        prop_assert!(decode::<GatewayFrame>(&encode(&frame).unwrap()).is_err());
    }

    #[test]
    fn gateway_frames_round_trip(frame in gateway_frame()) {
        let bytes = encode(&frame).unwrap();
        prop_assert_eq!(decode::<GatewayFrame>(&bytes).unwrap(), frame.clone());
        prop_assert_eq!(codec::encode_frame(&frame).unwrap(), bytes);
    }

    #[test]
    fn contents_round_trip_and_is_closed_agrees(content in content()) {
        let bytes = encode(&content).unwrap();
        prop_assert_eq!(decode::<OutboundContent>(&bytes).unwrap(), content.clone());
        prop_assert_eq!(
            codec::is_closed(&bytes),
            matches!(content.body, OutboundBody::Closed { .. })
        );
    }

    #[test]
    fn truncated_frames_are_errors_not_panics(frame in gateway_frame(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&frame).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(decode::<GatewayFrame>(&bytes[..cut]).is_err());
    }
}
