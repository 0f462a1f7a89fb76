//! The stream decoder on arbitrary bytes: whole (decode_all) and as a reader reads them
//! (StreamReader over a byte source), which must agree, never panic, and never allocate more
//! than the stream's checked max payload for a record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringsync::stream::check_fuzz_input(data);
});
