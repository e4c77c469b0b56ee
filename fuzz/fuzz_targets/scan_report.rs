//! Image-scan reports (`POST /scans`, `[[ingest.scan_dir]]`): Trivy and Grype JSON through
//! `scans::parse_scan`, and Trivy Operator VulnerabilityReports through
//! `scans::vulnerability_report`. A refused report is sanitised as ingest does before
//! dead-lettering it: Trivy's secret findings must be gone.
#![no_main]

use korvid_fuzz::{CLUSTER, assert_no_secret_findings, check_image_scan, sanitizer};
use korvid_ingest::scans::{parse_scan, vulnerability_report};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    match parse_scan(data, CLUSTER, 1) {
        Ok(scan) => check_image_scan(&scan, true),
        Err(e) => {
            let _ = (e.kind(), e.to_string());
            let clean = sanitizer().sanitize_scan_report(data);
            if let Ok(v) = serde_json::from_slice::<Value>(&clean) {
                assert_no_secret_findings(&v, "refused report");
            }
        }
    }
    if let Ok(object) = serde_json::from_slice::<Value>(data) {
        match vulnerability_report(&object, CLUSTER, 1) {
            Ok(scan) => check_image_scan(&scan, false),
            Err(e) => {
                let _ = (e.kind(), e.to_string());
            }
        }
    }
});
