//! `korvid scan`: content-recognised inputs, the three output formats and the exit codes.

use std::process::Command;

fn scan(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_korvid"))
        .arg("scan")
        .args(args)
        .env("KORVID__TELEMETRY__LISTEN", "")
        .output()
        .expect("run korvid scan");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A directory with a manifest, an audit log of JSON lines (one exec) and a Trivy report.
fn inputs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("web.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: shop\n  labels:\n    app: web\n    team: storefront\nspec:\n  containers:\n  - name: web\n    image: nginx:1.25\n",
    )
    .expect("write");
    let exec = serde_json::json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "scan-1",
        "stage": "ResponseStarted", "level": "Metadata", "verb": "create",
        "requestURI": "/api/v1/namespaces/shop/pods/web-1/exec?command=sh",
        "user": {"username": "mallory"}, "sourceIPs": ["198.51.100.7"],
        "objectRef": {"resource": "pods", "namespace": "shop", "name": "web-1", "subresource": "exec"},
        "responseStatus": {"code": 101}, "stageTimestamp": "2026-11-27T01:00:00.000000Z"});
    let read = serde_json::json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "scan-2",
        "stage": "ResponseComplete", "level": "Metadata", "verb": "get",
        "user": {"username": "dev"}, "objectRef": {"resource": "pods", "namespace": "shop", "name": "web-1"},
        "responseStatus": {"code": 200}, "stageTimestamp": "2026-11-27T01:00:01.000000Z"});
    std::fs::write(dir.path().join("audit.log"), format!("{exec}\n{read}\n")).expect("write");
    std::fs::write(
        dir.path().join("trivy.json"),
        serde_json::json!({"SchemaVersion": 2, "ArtifactName": "nginx:1.25",
            "Metadata": {"RepoDigests": ["nginx@sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac"]},
            "Results": []})
        .to_string(),
    )
    .expect("write");
    dir
}

#[test]
fn findings_come_out_as_json_with_the_documented_fields() {
    let dir = inputs();
    let path = dir.path().display().to_string();
    let (code, out, err) = scan(&["--format", "json", &path]);
    assert_eq!(
        code, 1,
        "a high finding fails at the default --fail-on high\n{err}"
    );
    let findings: serde_json::Value = serde_json::from_str(&out).expect("a JSON array");
    let exec = findings
        .as_array()
        .and_then(|a| a.iter().find(|f| f["rule_id"] == "KOR-0001"))
        .unwrap_or_else(|| panic!("the exec is found: {out}\n{err}"));
    for field in [
        "id",
        "rule_id",
        "detector",
        "tactic",
        "mitre",
        "severity",
        "subject",
        "title",
        "evidence",
        "implication",
        "remediation",
        "prevention",
    ] {
        assert!(exec.get(field).is_some(), "{field} missing: {exec}");
    }
    assert_eq!(exec["detector"], "rule");
    assert_eq!(exec["tactic"], "execution");
    assert_eq!(exec["subject"]["kind"], "Pod");
    assert_eq!(exec["subject"]["name"], "web-1");
    assert_eq!(exec["evidence"]["actor"], "mallory");
    assert_eq!(
        exec["evidence"]["labels"], "app=web,team=storefront",
        "the subject's labels come with the finding"
    );
}

#[test]
fn sarif_and_table_and_exit_codes() {
    let dir = inputs();
    let path = dir.path().display().to_string();
    let (code, out, _) = scan(&["--format", "sarif", "--fail-on", "critical", &path]);
    assert_eq!(code, 0, "nothing critical");
    let sarif: serde_json::Value = serde_json::from_str(&out).expect("SARIF JSON");
    assert_eq!(sarif["version"], "2.1.0");
    let results = sarif["runs"][0]["results"].as_array().expect("results");
    assert!(
        results
            .iter()
            .any(|r| r["ruleId"] == "KOR-0001" && r["level"] == "error"),
        "{out}"
    );
    assert!(
        sarif["runs"][0]["tool"]["driver"]["rules"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    let (code, out, _) = scan(&["--fail-on", "none", &path]);
    assert_eq!(code, 0);
    assert!(out.contains("HIGH (") && out.contains("KOR-0001"), "{out}");
    assert!(
        out.contains("from 3 files: 1 objects, 2 audit events"),
        "{out}"
    );
    let (code, _, err) = scan(&["/nonexistent/korvid-scan-input"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = scan(&["--fail-on", "loud", &path]);
    assert_eq!(code, 2, "usage error");
}

#[test]
fn exceptions_leave_out_what_they_cover_until_they_expire() {
    let dir = inputs();
    let path = dir.path().display().to_string();
    let rules = |out: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(out).expect("a JSON array");
        v.as_array()
            .expect("array")
            .iter()
            .map(|f| f["rule_id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (_, all, _) = scan(&["--format", "json", "--fail-on", "none", &path]);
    assert!(rules(&all).iter().any(|r| r == "KOR-0001"), "{all}");

    let file = dir.path().join("exceptions.yml");
    let write = |expires: &str| {
        std::fs::write(
            &file,
            format!(
                "exceptions:\n  - name: break-glass\n    rules: [KOR-0001]\n    match:\n      namespace: [shop]\n      actor: [mallory]\n    owner: sre\n    reason: incident 4711\n    expires: {expires}\n"
            ),
        )
        .expect("write");
    };
    let excepted = file.display().to_string();
    write("2999-01-01");
    let (code, out, err) = scan(&["--format", "json", "--exceptions", &excepted, &path]);
    assert!(!rules(&out).iter().any(|r| r == "KOR-0001"), "{out}");
    assert!(err.contains("\"break-glass\" left out 1"), "{err}");
    assert_eq!(code, 0, "nothing high is left\n{out}");

    write("2020-01-01");
    let (code, out, err) = scan(&["--format", "json", "--exceptions", &excepted, &path]);
    assert!(rules(&out).iter().any(|r| r == "KOR-0001"), "{out}");
    assert!(err.contains("has expired"), "{err}");
    assert_eq!(code, 1);

    // By the subject's Kubernetes labels.
    for (team, covered) in [("storefront", true), ("payments", false)] {
        std::fs::write(
            &file,
            format!(
                "exceptions:\n  - name: by-label\n    rules: [KOR-0001]\n    match:\n      label.team: [{team}]\n      label.app: [\"w*\"]\n    owner: sre\n    reason: team runbook\n"
            ),
        )
        .expect("write");
        let (_, out, err) = scan(&["--format", "json", "--exceptions", &excepted, &path]);
        assert_eq!(
            !rules(&out).iter().any(|r| r == "KOR-0001"),
            covered,
            "label.team={team}: {out}\n{err}"
        );
    }

    std::fs::write(&file, "exceptions:\n  - name: x\n    owner: sre\n").expect("write");
    let (code, _, err) = scan(&["--exceptions", &excepted, &path]);
    assert_eq!(code, 2, "an unusable exceptions file is a usage error");
    assert!(err.contains("line 2"), "{err}");
}
