//! Kafka record values: every consumer decodes bytes it did not write (anyone who can produce to
//! a topic writes them). Decodes the input as each of the nine record types, in both framings,
//! with decoders that know the current and the released schemas (by fingerprint and by
//! registry id); whatever decodes must encode and decode back to the same record.
//!
//! With `KORVID_FUZZ_WRITE_CODEC_SEEDS=DIR` the binary instead writes its seeds into DIR and
//! exits: records parsed from the other targets' seeds, encoded in both framings (rerun it
//! after a schema change; docs/fuzzing.md).
#![no_main]

use std::fmt::Debug;
use std::path::Path;

use korvid_fuzz::{CLUSTER, CURRENT_SCHEMA_ID, DECODERS, assert_roundtrip, sanitizer};
use korvid_schemas::codec::{Decoder, Framing, confluent_schema_id, encode};
use korvid_schemas::{DeadLetter, DedupState, ObjectOp, Record};
use libfuzzer_sys::fuzz_target;

fn check<R: Record + PartialEq + Debug>(data: &[u8], decoder: &Decoder<R>) {
    match decoder.decode(data) {
        Ok(record) => {
            let _ = (record.cluster(), record.event_time());
            assert_roundtrip(&record, decoder);
        }
        Err(e) => {
            let _ = (e.kind(), e.to_string());
        }
    }
}

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("KORVID_FUZZ_WRITE_CODEC_SEEDS") {
            write_seeds(Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let d = &*DECODERS;
        if let Some(id) = confluent_schema_id(data) {
            assert_eq!(data.get(1..5), Some(&id.to_be_bytes()[..]));
        }
        check(data, &d.audit_event);
        check(data, &d.object_change);
        check(data, &d.kube_event);
        check(data, &d.image_scan);
        check(data, &d.graph_window);
        check(data, &d.finding);
        check(data, &d.alert);
        check(data, &d.dead_letter);
        check(data, &d.dedup_state);
    }
);

/// Writes `<record>-<n>.single` and `<record>-<n>.confluent` for records the ingest parsers make
/// from the other targets' seeds, plus a dead letter and a notify state.
fn write_seeds(dir: &Path) {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let read = |target: &str| -> Vec<Vec<u8>> {
        let mut files: Vec<_> = std::fs::read_dir(seeds.join(target))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
    };
    std::fs::create_dir_all(dir).expect("create the seed directory");
    let s = sanitizer();
    let mut written = 0;
    let mut put = |name: &str, single: Vec<u8>, confluent: Vec<u8>| {
        std::fs::write(dir.join(format!("{name}.single")), single).expect("write a seed");
        std::fs::write(dir.join(format!("{name}.confluent")), confluent).expect("write a seed");
        written += 2;
    };
    fn both<R: Record>(r: &R) -> (Vec<u8>, Vec<u8>) {
        let confluent = Framing::Confluent {
            schema_id: CURRENT_SCHEMA_ID,
        };
        (
            encode(r, Framing::SingleObject).expect("encode"),
            encode(r, confluent).expect("encode"),
        )
    }

    let events: Vec<_> = read("audit_webhook")
        .iter()
        .filter_map(|b| korvid_ingest::audit::parse_body(b, CLUSTER, s).ok())
        .flat_map(|batch| batch.events)
        .collect();
    for (i, ev) in events.iter().take(3).enumerate() {
        let (a, b) = both(ev);
        put(&format!("audit-event-{i}"), a, b);
    }
    let mut objects = Vec::new();
    for bytes in read("manifest") {
        for doc in korvid_ingest::snapshot::parse_documents(&bytes)
            .unwrap_or_default()
            .into_iter()
            .flatten()
        {
            for o in korvid_ingest::snapshot::objects_in(doc) {
                if let Ok(c) = korvid_ingest::objects::object_change(
                    CLUSTER,
                    ObjectOp::Snapshot,
                    o,
                    None,
                    s,
                    1,
                ) {
                    objects.push(c);
                }
            }
        }
    }
    for (i, c) in objects
        .iter()
        .filter(|c| c.kind == "Secret")
        .take(1)
        .enumerate()
    {
        let (a, b) = both(c);
        put(&format!("object-change-secret-{i}"), a, b);
    }
    for (i, c) in objects
        .iter()
        .filter(|c| c.kind != "Secret")
        .take(2)
        .enumerate()
    {
        let (a, b) = both(c);
        put(&format!("object-change-{i}"), a, b);
        let (a, b) = both(&korvid_ingest::objects::identity(c).deletion(CLUSTER, 1));
        put(&format!("object-change-delete-{i}"), a, b);
    }
    let kube_objects = read("kube_object");
    let kube_events = kube_objects
        .iter()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .filter_map(|v| korvid_ingest::objects::kube_event(CLUSTER, &v, 1).ok());
    for (i, ev) in kube_events.enumerate() {
        let (a, b) = both(&ev);
        put(&format!("kube-event-{i}"), a, b);
    }
    let scans = read("scan_report")
        .iter()
        .filter_map(|b| korvid_ingest::scans::parse_scan(b, CLUSTER, 1).ok())
        .collect::<Vec<_>>();
    for (i, scan) in scans.iter().enumerate() {
        let (a, b) = both(scan);
        put(&format!("image-scan-{i}"), a, b);
    }
    let refused = b"{\"kind\":\"EventList\",\"items\":[";
    let dead = DeadLetter {
        cluster: Some(CLUSTER.into()),
        event_time: 1,
        stage: "ingest.audit_webhook".into(),
        error: "body is not valid JSON".into(),
        error_kind: "invalid_json".into(),
        source_topic: None,
        source_partition: Some(0),
        source_offset: Some(7),
        payload: s.sanitize_rejected_body(refused),
        payload_truncated: false,
    };
    let (a, b) = both(&dead);
    put("dead-letter-0", a, b);
    let state = DedupState {
        cluster: CLUSTER.into(),
        event_time: 2,
        fingerprint: "f".repeat(16),
        alert_id: "alert-1".into(),
        first_seen: 1,
        last_seen: 2,
        last_notified: 2,
        occurrences: 2,
        recent_finding_ids: vec!["finding-1".into(), "finding-2".into()],
        partition: Some(3),
        notified_status: Some("firing".into()),
        latest_finding: None,
    };
    let (a, b) = both(&state);
    put("dedup-state-0", a, b);
    eprintln!("codec: wrote {written} seeds into {}", dir.display());
}
