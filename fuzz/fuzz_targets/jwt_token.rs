#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trident_fuzz::jwt_token(data));
