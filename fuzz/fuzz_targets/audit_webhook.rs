//! The audit webhook's body (`POST /audit/webhook`): what kube-apiserver's webhook backend sends,
//! or anyone who reaches the port. Runs `audit::parse_body` as the handler does, sanitises a
//! refused body as the handler does before dead-lettering it, and checks that the one-pass
//! EventList reader agrees with the general path it shortcuts.
#![no_main]

use korvid_fuzz::{CLUSTER, check_audit_event, check_rejected_audit, sanitizer};
use korvid_ingest::audit::{parse_body, parse_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = sanitizer();
    match parse_body(data, CLUSTER, s) {
        Ok(batch) => {
            batch.events.iter().for_each(check_audit_event);
            for (err, raw) in &batch.rejected {
                let _ = (err.kind(), err.to_string());
                check_rejected_audit(raw);
            }
            // The general path (used for files) sees every item the fast path saw: the same
            // number of items, and every event the fast path accepted, in order. (It may accept
            // more: a JSON tree keeps the last of duplicate keys, a struct refuses them.)
            if let Ok(v) = serde_json::from_slice(data)
                && let Ok(general) = parse_value(v, false, CLUSTER, s)
            {
                assert_eq!(
                    batch.events.len() + batch.rejected.len(),
                    general.events.len() + general.rejected.len(),
                    "the fast and general paths saw different item counts"
                );
                let mut rest = general.events.iter();
                for ev in &batch.events {
                    assert!(
                        rest.any(|g| g == ev),
                        "the general path lost or changed an event the fast path accepted: {ev:?}"
                    );
                }
            }
        }
        Err(e) => {
            let _ = (e.kind(), e.to_string());
            let clean = s.sanitize_rejected_body(data);
            if let Ok(v) = serde_json::from_slice(&clean) {
                korvid_fuzz::assert_no_secret_values(&v, "refused webhook body");
            }
        }
    }
});
