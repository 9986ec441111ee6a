//! See log_socket_fuzz::listener_query for the input format and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| log_socket_fuzz::listener_query(data));
