//! receive on arbitrary bytes (and on the same bytes with every checksum made right) into a
//! fresh temporary DST: never a panic, never anything written outside DST.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scratch = std::env::temp_dir().join(format!("ringsync-fuzz-receive-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    ringsync::receive::check_fuzz_input(data, &scratch);
});
