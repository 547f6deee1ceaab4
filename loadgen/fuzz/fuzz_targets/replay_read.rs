//! Replay's readers on arbitrary bytes: never a panic, whatever the format detected, and every
//! record read writes to a synth line that reads back as the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(read) = loadgen::__fuzz::read_bytes(data) else { return };
    for record in read.records {
        if let Ok(written) = record {
            assert_eq!(
                written.back,
                Ok(written.line),
                "{} ({}): record does not survive a write and a read",
                written.location,
                read.format
            );
        }
    }
});
