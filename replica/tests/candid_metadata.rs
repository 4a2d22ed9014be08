//! The example canisters' wasm carries their candid interface as `candid:service` metadata
//! (`ic_ws_canister::candid_metadata!`): the public custom section `icp:public
//! candid:service`, exactly once, holding the checked-in `.did` file, where icp-cli, dfx and
//! the dashboard read a canister's interface.

use ic_ws_replica::wasm_build::{build_canister_wasm, workspace_root};
use wasmparser::{Parser, Payload};

/// The contents of every custom section named `name`.
fn custom_sections(wasm: &[u8], name: &str) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::CustomSection(section) = payload.expect("the wasm parses") {
            if section.name() == name {
                found.push(section.data().to_vec());
            }
        }
    }
    found
}

#[test]
fn example_canisters_carry_their_candid_interface() {
    let root = workspace_root().expect("workspace root");
    for (package, did) in [
        ("ic-ws-example-chat", "examples/chat/chat.did"),
        ("ic-ws-example-ticker", "examples/ticker/ticker.did"),
    ] {
        let wasm = build_canister_wasm(package).expect("build the example");
        let expected = std::fs::read(root.join(did)).expect("read the .did");
        let sections = custom_sections(&wasm, "icp:public candid:service");
        assert_eq!(sections.len(), 1, "{package}: one candid:service section");
        assert!(
            sections[0] == expected,
            "{package}: the candid:service section is not {did}"
        );
        assert!(
            custom_sections(&wasm, "icp:private candid:service").is_empty(),
            "{package}: no private copy"
        );
    }
}

/// The candid block of `docs/protocol.md` (the normative interface).
fn protocol_candid(root: &std::path::Path) -> String {
    let doc = std::fs::read_to_string(root.join("docs/protocol.md")).expect("read protocol.md");
    let start = doc
        .find("```candid\ntype ClientId")
        .expect("the candid block")
        + "```candid\n".len();
    let len = doc[start..].find("```").expect("its end");
    doc[start..start + len].to_string()
}

/// The four `ws_*` endpoints the macros generate (as checked into the examples' `.did` files,
/// which their own tests keep equal to the macros' output and the test above to the wasm's
/// metadata) have exactly the types `docs/protocol.md` specifies.
#[test]
fn generated_ws_endpoints_match_the_protocol_document() {
    use candid::types::{subtype::equal, TypeInner};
    use candid_parser::utils::CandidSource;
    use std::collections::HashSet;

    let root = workspace_root().expect("workspace root");
    let document = protocol_candid(&root);
    for did in ["examples/chat/chat.did", "examples/ticker/ticker.did"] {
        let generated = std::fs::read_to_string(root.join(did)).expect("read the .did");
        let (mut env, actor) = CandidSource::Text(&generated).load().expect(did);
        let (doc_env, doc_actor) = CandidSource::Text(&document).load().expect("protocol.md");
        let methods = env.as_service(&actor.expect(did)).expect(did).to_vec();
        let doc_methods = doc_env
            .as_service(&doc_actor.expect("a service"))
            .expect("a service")
            .to_vec();
        assert_eq!(doc_methods.len(), 4, "the document's service changed");
        for (name, doc_ty) in doc_methods {
            let (_, ty) = methods
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("{did} lacks {name}"));
            let doc_ty = env.merge_type(doc_env.clone(), doc_ty);
            let mut gamma = HashSet::new();
            equal(&mut gamma, &env, ty, &doc_ty)
                .unwrap_or_else(|e| panic!("{did}: {name} differs from docs/protocol.md: {e}"));
            assert!(matches!(ty.as_ref(), TypeInner::Func(_)));
        }
    }
}
