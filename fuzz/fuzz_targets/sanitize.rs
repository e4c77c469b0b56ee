//! The sanitiser on arbitrary JSON: `sanitize_object` (under each resource it is called with),
//! `sanitize_audit_json`, `sanitize_rejected_body` and `sanitize_scan_report`. No Secret
//! `data`/`stringData` value and no last-applied copy may survive; and when the body is cut
//! short (a truncated request), the text redaction must still blank every secret value that
//! was wholly inside the cut.
#![no_main]

use korvid_fuzz::{
    LAST_APPLIED, SCAN_SECRET_KEYS, assert_fields_hashed, assert_no_secret_findings,
    assert_no_secret_values, contains, for_each_object, is_redacted, quoted_if_checkable,
    sanitizer, secret_strings, strings_under,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let s = sanitizer();
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        // Not JSON: only the text redaction runs; it must not panic.
        let _ = s.sanitize_rejected_body(data);
        let _ = s.sanitize_scan_report(data);
        return;
    };

    for resource in [None, Some("secrets"), Some("configmaps"), Some("pods")] {
        let out = s.sanitize_object(resource, v.clone());
        assert_no_secret_values(&out, "sanitize_object");
        if resource == Some("secrets")
            && let Value::Object(obj) = &out
        {
            assert_fields_hashed(obj, &["data", "stringData"], "sanitize_object(secrets)");
        }
    }

    let event = s.sanitize_audit_json(v.clone());
    for field in ["requestObject", "responseObject"] {
        if let Some(body) = event.get(field) {
            assert_no_secret_values(body, "sanitize_audit_json");
        }
    }

    let clean = s.sanitize_rejected_body(data);
    let clean: Value = serde_json::from_slice(&clean).expect("a JSON body stays JSON");
    assert_no_secret_values(&clean, "sanitize_rejected_body");

    let report = s.sanitize_scan_report(data);
    let report: Value = serde_json::from_slice(&report).expect("a JSON report stays JSON");
    assert_no_secret_findings(&report, "sanitize_scan_report");

    // The same document cut short, as a request body may be: the text redaction takes over.
    let canonical = v.to_string().into_bytes();
    let cut = (data.len().wrapping_mul(7919) ^ data.first().map_or(0, |b| usize::from(*b)))
        % (canonical.len() + 1);
    let body = &canonical[..cut];
    let redacted = s.sanitize_rejected_body(body);
    let mut last_applied = Vec::new();
    for_each_object(&v, &mut |obj| {
        if let Some(Value::Object(a)) = obj.get("annotations")
            && let Some(copy) = a.get(LAST_APPLIED)
            && let Some(text) = copy.as_str()
            && !is_redacted(copy)
        {
            last_applied.push(text.to_string());
        }
    });
    for secret in secret_strings(&v).iter().chain(&last_applied) {
        if let Some(quoted) = quoted_if_checkable(secret, &canonical, cut) {
            assert!(
                !contains(&redacted, &quoted),
                "secret {secret:?} survived a body cut at {cut}: {}",
                String::from_utf8_lossy(&redacted)
            );
        }
    }
    let redacted_report = s.sanitize_scan_report(body);
    for secret in strings_under(&v, SCAN_SECRET_KEYS) {
        if let Some(quoted) = quoted_if_checkable(&secret, &canonical, cut) {
            assert!(
                !contains(&redacted_report, &quoted),
                "secret finding {secret:?} survived a report cut at {cut}: {}",
                String::from_utf8_lossy(&redacted_report)
            );
        }
    }
});
