//! `korvid rules`: the built-in catalog lints clean and passes its own examples, and the example
//! runner does fail a rule whose examples it contradicts.

use std::process::Command;

fn korvid(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_korvid"));
    cmd.args(args).env("KORVID__TELEMETRY__LISTEN", "");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run korvid");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_builtin_catalog_lints_clean_and_passes_its_examples() {
    let (code, out) = korvid(&["rules", "lint"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(", 0 problems"), "{out}");
    let (code, out) = korvid(&["rules", "test"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" 0 failed") && !out.contains("FAIL"), "{out}");
    let (code, out) = korvid(&["rules", "list"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("execution") && out.contains("KOR-0001"),
        "{out}"
    );
}

#[test]
fn a_rule_contradicted_by_its_examples_fails() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("MY-0001.yaml"),
        r#"id: MY-0001
title: Deletes of config maps
tactic: impact
techniques: [T1485]
severity: medium
query: |
  SELECT 'ConfigMap' AS subject_kind, namespace AS subject_namespace, target AS subject_name
  FROM activity WHERE resource = 'configmaps' AND verb = 'delete'
implication: Data may be lost.
remediation: Restore it.
prevention: Restrict delete.
references: [https://example.com]
examples:
  positive:
    - name: a create is not a delete, so this positive cannot fire
      audit:
        - {user: u, verb: create, resource: configmaps, namespace: a, name: b}
  negative:
    - name: a delete is exactly what it finds, so this negative fires
      audit:
        - {user: u, verb: delete, resource: configmaps, namespace: a, name: b}
"#,
    )
    .expect("write");
    let config = dir.path().join("korvid.toml");
    std::fs::write(
        &config,
        format!(
            "[detect]\nbuiltin_rules = false\nrules_dirs = [\"{}\"]\n",
            dir.path().display()
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let (code, out) = korvid(&["--config", &config, "rules", "test"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL MY-0001 positive") && out.contains("FAIL MY-0001 negative"),
        "{out}"
    );
    assert!(out.contains("0 passed, 2 failed"), "{out}");
}
