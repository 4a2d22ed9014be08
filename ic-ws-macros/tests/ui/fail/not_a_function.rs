use ic_ws_canister::on_message;

#[on_message]
struct Handler;

fn main() {
    let _ = Handler;
}
