//! W3C `traceparent` values: the audit webhook takes one from whoever posts to it, and every
//! consumer reads one from Kafka record headers. Runs `trace_context::parse`, `trace_id`,
//! `span_after` and `link` as the services do.
#![no_main]

use korvid_common::trace_context::{link, parse, span_after, trace_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Headers are bytes; the services only use values that are UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let valid = parse(text).is_some();
    match trace_id(text) {
        Some(id) => {
            assert!(valid, "a trace id from a value `parse` refuses: {text:?}");
            assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32),
                "trace id {id:?} from {text:?}"
            );
            // opentelemetry_sdk reads the field as a number without checking its length (W3C
            // wants exactly 32 digits), so `00-abc-...` gives `000...abc`: compare the digits.
            assert!(
                text.contains(id.trim_start_matches('0')),
                "trace id {id:?} is not in {text:?}"
            );
        }
        None => assert!(!valid, "no trace id from a value `parse` accepts: {text:?}"),
    }
    let span = span_after(tracing::Span::none(), Some(text));
    link(&span, text);
});
