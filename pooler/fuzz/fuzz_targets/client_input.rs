//! libFuzzer entry: every client-facing parser on arbitrary bytes (pooler::fuzz::client_input).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let report = pooler::fuzz::client_input(data);
    assert!(report.largest_reservation <= 2 * report.max_message_len as usize + 16);
});
