//! The schema contracts: round trips, derived schemas equal the .avsc files, and compatibility
//! with every released version.

use std::collections::HashMap;

use apache_avro::Schema;
use korvid_schemas::codec::{CodecError, Decoder, Framing, Record, encode};
use korvid_schemas::released::{all_released, check_compatibility};
use korvid_schemas::*;

fn subject() -> Subject {
    Subject {
        kind: "Pod".into(),
        namespace: Some("payments".into()),
        name: "api-7f9".into(),
        uid: Some("0b1c".into()),
    }
}

fn finding() -> Finding {
    Finding {
        cluster: "prod-eu".into(),
        event_time: 1_700_000_002_000,
        id: "f1".into(),
        fingerprint: "fp1".into(),
        window_id: "w1".into(),
        detected_at: 1_700_000_002_100,
        detector: Detector::Rule,
        rule_id: Some("KOR-0001".into()),
        model_version: None,
        score: 1.0,
        title: "Exec into a pod".into(),
        tactic: Tactic::Execution,
        techniques: vec!["T1609".into()],
        severity: Severity::High,
        subject: subject(),
        evidence: vec![Evidence {
            name: "command".into(),
            value: "sh".into(),
        }],
        implication: "i".into(),
        remediation: "r".into(),
        prevention: "p".into(),
        references: vec![],
    }
}

fn samples() -> (
    ObjectChange,
    AuditEvent,
    KubeEvent,
    ImageScan,
    GraphWindow,
    Alert,
    DeadLetter,
) {
    let object = ObjectChange {
        cluster: "c".into(),
        event_time: 1,
        op: ObjectOp::Delete,
        uid: "u".into(),
        api_version: "rbac.authorization.k8s.io/v1".into(),
        kind: "ClusterRoleBinding".into(),
        namespace: None,
        name: "admins".into(),
        resource_version: Some("42".into()),
        labels: HashMap::from([("team".into(), "sec".into())]),
        object_json: Some("{}".into()),
    };
    let audit = AuditEvent {
        cluster: "c".into(),
        event_time: 1_700_000_000_123_456,
        audit_id: "a".into(),
        stage: "ResponseComplete".into(),
        level: "Metadata".into(),
        verb: "create".into(),
        request_uri: "/api/v1/namespaces/d/pods/p/exec?command=sh".into(),
        user: "alice".into(),
        groups: vec!["system:authenticated".into()],
        impersonated_user: None,
        source_ips: vec!["10.0.0.1".into()],
        user_agent: Some("kubectl/v1.30".into()),
        api_group: None,
        api_version: Some("v1".into()),
        resource: Some("pods".into()),
        subresource: Some("exec".into()),
        namespace: Some("d".into()),
        name: Some("p".into()),
        response_code: Some(101),
        annotations: HashMap::new(),
        request_object: None,
    };
    let event = KubeEvent {
        cluster: "c".into(),
        event_time: 5,
        uid: "e".into(),
        namespace: Some("d".into()),
        event_type: "Warning".into(),
        reason: "BackOff".into(),
        message: "m".into(),
        involved_kind: "Pod".into(),
        involved_namespace: Some("d".into()),
        involved_name: "p".into(),
        involved_uid: None,
        source_component: Some("kubelet".into()),
        count: 3,
    };
    let scan = ImageScan {
        cluster: "c".into(),
        event_time: 9,
        image_digest: "sha256:ab".into(),
        image_ref: "nginx:1.25".into(),
        registry: "docker.io".into(),
        repository: "library/nginx".into(),
        tag: Some("1.25".into()),
        scanner: "trivy".into(),
        scanner_version: None,
        os_family: Some("debian".into()),
        counts: SeverityCounts {
            critical: 1,
            ..Default::default()
        },
        vulnerabilities: vec![Vulnerability {
            id: "CVE-2024-1".into(),
            severity: Severity::Critical,
            package: "openssl".into(),
            installed_version: "1".into(),
            fixed_version: Some("2".into()),
            title: None,
            cvss: Some(9.8),
            known_exploited: true,
        }],
    };
    let window = GraphWindow {
        cluster: "c".into(),
        event_time: 2000,
        window_id: "w".into(),
        kind: WindowKind::Incremental,
        partition_key: "c/d".into(),
        window_start: 0,
        window_end: 2000,
        split_index: 0,
        split_count: 1,
        event_count: 3,
        nodes: vec![1, 2, 3],
        edges: vec![],
        activity: vec![0xff; 300],
        kube_events: vec![7, 7],
    };
    let f = finding();
    let alert = Alert {
        cluster: f.cluster.clone(),
        event_time: 3,
        id: "fp1-1".into(),
        fingerprint: f.fingerprint.clone(),
        status: AlertStatus::Firing,
        title: f.title.clone(),
        tactic: f.tactic,
        techniques: f.techniques.clone(),
        severity: f.severity,
        subject: f.subject.clone(),
        detector: f.detector,
        rule_id: f.rule_id.clone(),
        model_version: None,
        score: 0.5,
        finding_ids: vec![f.id.clone()],
        occurrences: 1,
        first_seen: 1,
        last_seen: 2,
        evidence: f.evidence.clone(),
        implication: "i".into(),
        remediation: "r".into(),
        prevention: "p".into(),
        references: vec!["https://example.org".into()],
    };
    let dead = DeadLetter {
        cluster: None,
        event_time: 4,
        stage: "ingest.audit_webhook".into(),
        error: "bad json".into(),
        error_kind: "invalid_json".into(),
        source_topic: None,
        source_partition: Some(0),
        source_offset: Some(7),
        payload: b"{not json".to_vec(),
        payload_truncated: false,
    };
    (object, audit, event, scan, window, alert, dead)
}

fn round_trip<R: Record + PartialEq + std::fmt::Debug>(r: &R) {
    for framing in [Framing::SingleObject, Framing::Confluent { schema_id: 17 }] {
        let bytes = encode(r, framing).expect("encode");
        let mut decoder = Decoder::<R>::new();
        decoder.add_schema_id(17, R::compiled().schema().clone());
        let back = decoder.decode(&bytes).expect("decode");
        assert_eq!(&back, r, "{} via {framing:?}", R::NAME);
    }
}

#[test]
fn every_record_round_trips_in_both_framings() {
    let (o, a, e, s, w, al, d) = samples();
    round_trip(&o);
    round_trip(&a);
    round_trip(&e);
    round_trip(&s);
    round_trip(&w);
    round_trip(&finding());
    round_trip(&al);
    round_trip(&d);
    round_trip(&DedupState {
        cluster: "c".into(),
        event_time: 1,
        fingerprint: "fp".into(),
        alert_id: "a".into(),
        first_seen: 1,
        last_seen: 2,
        last_notified: 2,
        occurrences: 3,
        recent_finding_ids: vec!["f".into()],
        partition: Some(3),
        notified_status: Some("firing".into()),
        latest_finding: Some("{}".into()),
    });
}

fn assert_derived_matches<R: Record>() {
    let derived = R::get_schema();
    let file = Schema::parse_str(R::AVSC).expect("avsc parses");
    assert_eq!(
        derived.canonical_form(),
        file.canonical_form(),
        "the Rust type {} drifted from its .avsc",
        R::NAME
    );
}

#[test]
fn derived_schemas_equal_the_avsc_files() {
    assert_derived_matches::<ObjectChange>();
    assert_derived_matches::<AuditEvent>();
    assert_derived_matches::<KubeEvent>();
    assert_derived_matches::<ImageScan>();
    assert_derived_matches::<GraphWindow>();
    assert_derived_matches::<Finding>();
    assert_derived_matches::<Alert>();
    assert_derived_matches::<DeadLetter>();
    assert_derived_matches::<DedupState>();
}

fn current_avsc(name: &str) -> &'static str {
    match name {
        "ObjectChange" => ObjectChange::AVSC,
        "AuditEvent" => AuditEvent::AVSC,
        "KubeEvent" => KubeEvent::AVSC,
        "ImageScan" => ImageScan::AVSC,
        "GraphWindow" => GraphWindow::AVSC,
        "Finding" => Finding::AVSC,
        "Alert" => Alert::AVSC,
        "DeadLetter" => DeadLetter::AVSC,
        "DedupState" => DedupState::AVSC,
        other => panic!("released schema for unknown record {other}"),
    }
}

#[test]
fn current_schemas_stay_compatible_with_every_release() {
    assert!(
        all_released().len() >= 9,
        "every record has a released version"
    );
    for (name, release, avsc) in all_released() {
        if let Err(e) = check_compatibility(avsc, current_avsc(name)) {
            panic!("{name} breaks readers of release {release}: {e}");
        }
    }
}

/// Proves the compatibility check bites: the kinds of change that break readers are refused.
#[test]
fn compatibility_check_refuses_breaking_changes() {
    let mut json: serde_json::Value = serde_json::from_str(Finding::AVSC).expect("json");
    let fields = json["fields"].as_array_mut().expect("fields");
    // A new required field without a default: new readers cannot read old data.
    fields.push(serde_json::json!({"name": "owner", "type": "string"}));
    let added = json.to_string();
    assert!(check_compatibility(Finding::AVSC, &added).is_err());

    // Changing a field's type incompatibly.
    let mut json: serde_json::Value = serde_json::from_str(Finding::AVSC).expect("json");
    for f in json["fields"].as_array_mut().expect("fields") {
        if f["name"] == "score" {
            f["type"] = serde_json::json!("string");
        }
    }
    assert!(check_compatibility(Finding::AVSC, &json.to_string()).is_err());

    // Removing an enum symbol: old data with that symbol cannot be read.
    let narrowed = Finding::AVSC.replace("\"CRITICAL\"", "\"SEVERE\"");
    assert!(check_compatibility(Finding::AVSC, &narrowed).is_err());

    // Adding an optional field with a default is fine.
    let mut json: serde_json::Value = serde_json::from_str(Finding::AVSC).expect("json");
    json["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "owner", "type": ["null", "string"], "default": null}));
    assert!(check_compatibility(Finding::AVSC, &json.to_string()).is_ok());
}

/// Data written by an older writer schema (here: a Finding without `references`) still decodes.
#[test]
fn older_writer_schema_resolves_to_current_reader() {
    let mut json: serde_json::Value = serde_json::from_str(Finding::AVSC).expect("json");
    json["fields"]
        .as_array_mut()
        .expect("fields")
        .retain(|f| f["name"] != "references");
    let old = Schema::parse_str(&json.to_string()).expect("old schema");
    let f = finding();
    let mut value = apache_avro::to_value(&f).expect("to value");
    if let apache_avro::types::Value::Record(fields) = &mut value {
        fields.retain(|(n, _)| n != "references");
    }
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&old)
        .build()
        .expect("writer");
    let datum = writer.write_value_to_vec(value).expect("datum");
    let mut framed = vec![0u8];
    framed.extend_from_slice(&99u32.to_be_bytes());
    framed.extend_from_slice(&datum);

    let mut decoder = Decoder::<Finding>::new();
    assert!(matches!(
        decoder.decode(&framed),
        Err(CodecError::UnknownSchemaId(99))
    ));
    decoder.add_schema_id(99, old);
    let back = decoder.decode(&framed).expect("resolved");
    assert_eq!(back.references, Vec::<String>::new());
    assert_eq!(back.id, f.id);
}

#[test]
fn garbage_gets_a_clear_error() {
    let d = Decoder::<Finding>::new();
    assert!(matches!(
        d.decode(&[]),
        Err(CodecError::Truncated { len: 0 })
    ));
    assert!(matches!(
        d.decode(b"{\"a\":1}"),
        Err(CodecError::UnknownFraming(b'{'))
    ));
    let mut bytes = encode(&finding(), Framing::SingleObject).expect("encode");
    bytes[3] ^= 0xff;
    assert!(matches!(
        d.decode(&bytes),
        Err(CodecError::UnknownFingerprint { .. })
    ));
    let bytes = encode(&finding(), Framing::SingleObject).expect("encode");
    assert!(matches!(
        d.decode(&bytes[..bytes.len() - 3]),
        Err(CodecError::Decode { .. })
    ));
    // A value of another record type is refused by fingerprint, not misread.
    let (_, audit, ..) = samples();
    let bytes = encode(&audit, Framing::SingleObject).expect("encode");
    assert!(d.decode(&bytes).is_err());
}

#[test]
fn single_object_header_follows_the_avro_spec() {
    let bytes = encode(&finding(), Framing::SingleObject).expect("encode");
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    let fp = u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes"));
    assert_eq!(fp, Finding::compiled().fingerprint());
    // CRC-64-AVRO of the canonical form, computed here independently of the library.
    assert_eq!(
        fp,
        crc64_avro(Finding::compiled().schema().canonical_form().as_bytes())
    );
}

/// The reference algorithm from the Avro specification.
fn crc64_avro(data: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let mut table = [0u64; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & 0u64.wrapping_sub(fp & 1));
        }
        *slot = fp;
    }
    let mut fp = EMPTY;
    for b in data {
        fp = (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize];
    }
    fp
}
