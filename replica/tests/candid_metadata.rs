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
