//! `korvid simulate`: deterministic output that the rest of korvid reads as real input, with
//! ground truth that findings can be matched against.

use std::path::Path;
use std::process::Command;

fn korvid(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_korvid"))
        .args(args)
        .env("KORVID__TELEMETRY__LISTEN", "")
        .output()
        .expect("run korvid");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                std::fs::read(&path).expect("read"),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn simulations_are_reproducible_and_scan_finds_their_attacks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let args = |out: &Path| {
        vec![
            "simulate".to_string(),
            "--seed".into(),
            "21".into(),
            "--namespaces".into(),
            "4".into(),
            "--duration".into(),
            "600".into(),
            "--campaigns".into(),
            "4".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    for out in [&a, &b] {
        let argv = args(out);
        let (code, stdout, err) = korvid(&argv.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 0, "{err}");
        let summary: serde_json::Value = serde_json::from_str(&stdout).expect("summary");
        assert_eq!(summary["campaigns"], 4, "{summary}");
    }
    assert_eq!(files(&a), files(&b), "same seed, same bytes");

    // Everything written is input korvid reads: no document refused.
    let (code, stdout, err) = korvid(&[
        "scan",
        "--format",
        "json",
        "--fail-on",
        "none",
        &a.join("cluster.json").display().to_string(),
        &a.join("audit.log").display().to_string(),
        &a.join("scans").display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("skipped"), "{err}");
    let findings: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("findings");
    let labels: Vec<serde_json::Value> = std::fs::read_to_string(a.join("labels.jsonl"))
        .expect("labels")
        .lines()
        .map(|l| serde_json::from_str(l).expect("label"))
        .collect();
    let attack_ids: std::collections::HashSet<&str> = labels
        .iter()
        .filter(|l| l["malicious"] == true)
        .flat_map(|l| l["audit_ids"].as_array().into_iter().flatten())
        .filter_map(|v| v.as_str())
        .collect();
    assert!(!attack_ids.is_empty());
    let cited: Vec<&str> = findings
        .iter()
        .filter_map(|f| f["evidence"]["sample_event_ids"].as_str())
        .flat_map(|ids| ids.split(','))
        .collect();
    assert!(
        cited.iter().any(|id| attack_ids.contains(id)),
        "no finding cites an attack request"
    );
}

#[test]
fn the_library_lists_and_unknown_techniques_are_refused() {
    let (code, out, _) = korvid(&["simulate", "--list"]);
    assert_eq!(code, 0);
    assert!(out.contains("24 techniques"), "{out}");
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().display().to_string();
    let (code, _, err) = korvid(&["simulate", "--out", &dir, "--exclude", "impact.nothing"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown technique `impact.nothing`"), "{err}");
}
