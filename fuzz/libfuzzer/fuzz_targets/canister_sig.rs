#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ic_ws_fuzz::canister_sig::run(data));
