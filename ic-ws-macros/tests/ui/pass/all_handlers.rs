//! Every handler shape: `on_open` without arguments and fallible, `on_message` returning a
//! `Result` alias, `on_close` without the reason; patterns instead of names; items in any
//! order.
use candid::{CandidType, Deserialize};
use ic_ws_canister::{on_close, on_message, on_open, ClientId};

type HandlerResult = Result<(), String>;

#[derive(CandidType, Deserialize)]
struct Move {
    x: i32,
    y: i32,
}

#[on_close]
fn gone(_: ClientId) {}

#[on_message(outbound = Vec<Move>)]
fn moved(client: ClientId, Move { x, y }: Move) -> HandlerResult {
    if x < 0 || y < 0 {
        return Err(format!("client {client}: off the board"));
    }
    Ok(())
}

#[on_open]
fn hello(client: ClientId) -> Result<(), String> {
    let _ = client;
    Ok(())
}

ic_cdk::export_candid!();

fn main() {
    let did = __export_service();
    assert!(
        did.contains("ws_app_types : () -> (opt Move, opt vec Move) query;"),
        "{did}"
    );
}
