//! See log_socket_fuzz::ingest_body for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| log_socket_fuzz::ingest_body(data));
