//! Writes a synthetic lake for measuring `korvid sql`: N findings spread over days, clusters,
//! tactics and severities, in files of 10,000 rows, with the lake's own writer code.
//!
//! `cargo run -p korvid-lake --example synthetic_lake -- DIR N`, then
//! `KORVID__LAKE__DIR=DIR korvid sql "SELECT tactic, severity, count(*) FROM findings GROUP BY 1, 2"`.

use korvid_lake::columns::LakeRecord;
use korvid_lake::files;
use korvid_schemas::{Detector, Evidence, Finding, Severity, Subject, Tactic};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().ok_or("usage: synthetic_lake DIR N")?);
    let n: usize = args.next().ok_or("usage: synthetic_lake DIR N")?.parse()?;
    let start = 1_795_000_000_000_i64;
    let severities = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];
    let mut rows = Vec::with_capacity(10_000);
    let mut written = 0;
    for i in 0..n {
        let cluster = format!("cluster-{}", i % 3);
        let event_time = start + (i as i64 % 7) * 86_400_000 + i as i64;
        rows.push(Finding {
            cluster,
            event_time,
            id: format!("finding-{i}"),
            fingerprint: format!("fp-{}", i % 5_000),
            window_id: format!("w-{}", i / 50),
            detected_at: event_time + 20,
            detector: Detector::Rule,
            rule_id: Some(format!("KOR-{:04}", i % 61)),
            model_version: None,
            score: (i % 100) as f64 / 100.0,
            title: "Synthetic finding for measurements".into(),
            tactic: Tactic::ALL[i % Tactic::ALL.len()],
            techniques: vec!["T1609".into()],
            severity: severities[i % severities.len()],
            subject: Subject {
                kind: "Pod".into(),
                namespace: Some(format!("ns-{}", i % 40)),
                name: format!("pod-{}", i % 2_000),
                uid: None,
            },
            evidence: vec![Evidence {
                name: "actor".into(),
                value: format!("user-{}", i % 300),
            }],
            implication: "An attacker could run code in the container.".into(),
            remediation: "Delete the pod and rotate its credentials.".into(),
            prevention: "Restrict pods/exec in RBAC.".into(),
            references: vec!["https://attack.mitre.org/techniques/T1609/".into()],
        });
        if rows.len() == 10_000 || i + 1 == n {
            // One file per (date, cluster) present in this chunk.
            let mut parts: std::collections::BTreeMap<(String, String), Vec<Finding>> =
                Default::default();
            for f in rows.drain(..) {
                parts
                    .entry((files::utc_date(f.event_time), f.cluster.clone()))
                    .or_default()
                    .push(f);
            }
            for ((date, cluster), part) in parts {
                let batch = Finding::to_batch(&part)?;
                files::write_parquet(
                    &files::partition_dir(&dir, Finding::TABLE, &date, &cluster),
                    &batch,
                    korvid_common::now_millis(),
                )?;
                written += 1;
            }
        }
    }
    println!("{n} findings in {written} files under {}", dir.display());
    Ok(())
}
