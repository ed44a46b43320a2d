//! The wire format carries slices and deltas exactly, and the pre-encoded updates the
//! controller sends decode to the same messages as a straightforward encoding.

#[path = "../../policy/tests/support/gen.rs"]
#[allow(dead_code)] // the probe helpers serve the policy crate's tests
mod gen;

use std::sync::Arc;

use palisade_policy::delta::{apply, diff};
use palisade_policy::engine::Engine;
use palisade_proto::convert;
use palisade_proto::encode::{self, SharedParts};
use palisade_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;

#[test]
fn descriptor_set_decodes_and_holds_the_services() {
    let fds = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    let files: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
    for f in [
        "palisade/v1/types.proto",
        "palisade/v1/sync.proto",
        "palisade/v1/introspection.proto",
    ] {
        assert!(files.contains(&f), "{f} in {files:?}");
    }
    let services: Vec<&str> = fds
        .file
        .iter()
        .flat_map(|f| f.service.iter().map(|s| s.name()))
        .collect();
    assert!(services.contains(&"Sync") && services.contains(&"Introspection"));
    assert!(fds.file.iter().all(|f| f.package() == "palisade.v1"));
    let commented = fds.file.iter().any(|f| {
        f.source_code_info
            .as_ref()
            .is_some_and(|s| s.location.iter().any(|l| l.leading_comments.is_some()))
    });
    assert!(commented, "comments are kept for grpcurl describe");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn slices_round_trip_with_their_digest(setup in prop::collection::vec(gen::command(), 0..40)) {
        let engine = Engine::load(3, setup);
        for node in gen::NODES {
            let slice = engine.slice(node);
            let wire = convert::slice_to_pb(&slice);
            let bytes = wire.encode_to_vec();
            let (back, digest) = convert::slice_from_pb(&pb::NodeSlice::decode(&bytes[..]).unwrap())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &slice);
            prop_assert_eq!(digest, slice.digest());
            prop_assert_eq!(back.digest(), slice.digest());
        }
    }

    #[test]
    fn deltas_round_trip_and_pre_encoded_updates_match(
        a in prop::collection::vec(gen::command(), 0..30),
        b in prop::collection::vec(gen::command(), 0..30),
    ) {
        let (ea, eb) = (Engine::load(1, a), Engine::load(2, b));
        let mut shared = SharedParts::default();
        for node in gen::NODES {
            let (sa, sb) = (ea.slice(node), eb.slice(node));
            let d = diff(&sa, &sb);
            let back = convert::delta_from_pb(&convert::delta_to_pb(&d)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &d);
            let mut replay = sa.clone();
            apply(&mut replay, &back).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(replay.digest(), sb.digest());

            let encoded = encode::update(node, 1, 2, &sb.digest(), &d, &mut shared);
            let decoded = pb::ControllerMessage::decode(&encoded.0[..]).unwrap();
            let expected = pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::Update(pb::Update {
                    node: node.to_string(),
                    from_version: 1,
                    to_version: 2,
                    digest: sb.digest().to_hex(),
                    delta: Some(convert::delta_to_pb(&d)),
                })),
            };
            prop_assert_eq!(decoded, expected);
        }
    }
}

#[test]
fn a_member_change_shared_by_many_updates_is_encoded_once() {
    let change = Arc::new(palisade_policy::delta::MemberChange {
        set: palisade_policy::slice::SetId(0xabc),
        added: vec!["10.0.0.1/32".parse().unwrap()],
        removed: vec![],
    });
    let delta = palisade_policy::SliceDelta {
        members: vec![change.clone()],
        ..Default::default()
    };
    let mut shared = SharedParts::default();
    let digest = palisade_policy::Digest::default();
    let a = encode::update("n1", 1, 2, &digest, &delta, &mut shared);
    let b = encode::update("n2", 5, 2, &digest, &delta, &mut shared);
    assert_eq!(shared.encoded_member_changes(), 1);
    assert_ne!(a, b, "headers differ");
    let decoded = pb::ControllerMessage::decode(&b.0[..]).unwrap();
    let Some(pb::controller_message::Msg::Update(u)) = decoded.msg else {
        panic!()
    };
    assert_eq!(u.delta.unwrap().members[0].added, vec!["10.0.0.1/32"]);
}

#[test]
fn bad_messages_name_the_field() {
    let mut wire = convert::slice_to_pb(&palisade_policy::NodeSlice::empty("n"));
    wire.endpoints.push(pb::Endpoint {
        ip: "10.0.0.300".into(),
        ..Default::default()
    });
    let err = convert::slice_from_pb(&wire).unwrap_err();
    assert_eq!(err.field, "endpoints[0].ip");
    let set = pb::AddressSet {
        id: "0000000000000001".into(),
        definition: Some(convert::set_def_to_pb(
            &palisade_policy::slice::SetDef::IpBlock {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec![],
            },
        )),
        ..Default::default()
    };
    let err = convert::address_set_from_pb(&set, "sets[0]").unwrap_err();
    assert!(
        err.to_string().contains("not the id of its definition"),
        "{err}"
    );
}
