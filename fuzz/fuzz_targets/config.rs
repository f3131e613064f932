//! The configuration loader on any text: a configuration or errors that say where, never a panic.
#![no_main]

use std::path::Path;

use ladderd::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, Path::new("fuzz.yaml")) {
        Ok(config) => assert!(config.validate().is_empty()),
        Err(errors) => assert!(!errors.is_empty()),
    }
});
