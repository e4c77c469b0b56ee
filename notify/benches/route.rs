//! Candidate findings per second through notify's decision path on one core: the policy's
//! exceptions, the alert engine (fold, group timers, inhibition) and the routing tree, over a
//! simulated hour; next to a HashMap count of the same findings (the floor any dedup pays).
//! `cargo bench -p korvid-notify --bench route` (also a row of `make bench`).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use korvid_schemas::*;

fn time<F: FnMut()>(runs: usize, mut f: F) -> f64 {
    f();
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let mut notes: Vec<String> = Vec::new();
    // notify.route: findings through the policy (exceptions, route tree), the alert engine
    // (fold, group timers, inhibition) and the dispatcher's routing, as notify runs them.
    const NOTIFY_FINDINGS: usize = 200_000;
    let tactics = [
        Tactic::Execution,
        Tactic::Persistence,
        Tactic::CredentialAccess,
        Tactic::Discovery,
    ];
    let findings: Vec<Finding> = (0..NOTIFY_FINDINGS)
        .map(|i| Finding {
            cluster: "c".into(),
            // A simulated hour.
            event_time: (i as i64) * 3_600_000 / NOTIFY_FINDINGS as i64,
            id: format!("f{i}"),
            fingerprint: format!("fp{}", i % 5_000),
            window_id: "w".into(),
            detected_at: 0,
            detector: Detector::Rule,
            rule_id: Some(format!("KOR-{:04}", i % 50)),
            model_version: None,
            score: 1.0,
            title: "t".into(),
            tactic: tactics[i % tactics.len()],
            techniques: vec![],
            severity: if i % 7 == 0 {
                Severity::Critical
            } else {
                Severity::High
            },
            subject: Subject {
                kind: "Pod".into(),
                namespace: Some(format!("ns{}", i % 40)),
                name: format!("p{}", i % 5_000),
                uid: None,
            },
            evidence: vec![Evidence {
                name: "actor".into(),
                value: format!("user{}", i % 30),
            }],
            implication: String::new(),
            remediation: String::new(),
            prevention: String::new(),
            references: vec![],
        })
        .collect();
    let policy_doc = r#"
exceptions:
  - name: ci
    rules: [persistence]
    match: {namespace: ["ns1*"], user: [user3]}
    owner: bench
    reason: bench
route:
  sinks: [stdout]
  routes:
    - name: pager
      match: {tactic: [credential_access], severity: [critical]}
      sinks: [pagerduty]
      continue: true
    - name: team
      match: {namespace: ["ns2*", "ns3*"]}
      sinks: [slack]
"#;
    let sink_names: Vec<String> = ["stdout", "pagerduty", "slack"].map(String::from).to_vec();
    let policy = korvid_notify::policy::Policy::parse(policy_doc, &sink_names, Severity::Medium, 0)
        .expect("bench policy");
    let grouping = korvid_notify::engine::Grouping {
        group_by: vec![
            korvid_notify::engine::GroupLabel::Cluster,
            korvid_notify::engine::GroupLabel::Namespace,
        ],
        group_wait: 30_000,
        group_interval: 300_000,
        repeat_interval: 3_600_000,
        resolve_timeout: 300_000,
    };
    let mut notified = 0usize;
    let korvid = time(5, || {
        let mut engine = korvid_notify::engine::Engine::new(grouping.clone());
        let mut routed = 0usize;
        for f in &findings {
            if policy.exceptions.covering(f, 0).is_some() {
                continue;
            }
            black_box(engine.observe(f, 0, f.event_time));
            let (flushes, writes) = engine.advance(f.event_time, &policy);
            for fl in &flushes {
                for (a, _) in &fl.alerts {
                    routed += policy.sinks_for_alert(a).len();
                }
            }
            black_box(writes);
        }
        notified = routed;
        black_box(engine.len());
    });
    let baseline = time(5, || {
        let mut m: HashMap<&str, i64> = HashMap::new();
        for f in &findings {
            *m.entry(f.fingerprint.as_str()).or_default() += 1;
        }
        black_box(m.len());
    });
    notes.push(format!(
        "notify.route: {NOTIFY_FINDINGS} findings, 5,000 fingerprints, 40 groups, a simulated hour: {:.0} findings/s on one core ({notified} alert routings)",
        NOTIFY_FINDINGS as f64 / korvid
    ));
    for n in &notes {
        println!("{n}");
    }
    // Lines starting with `BENCH ` are what `make bench` appends to BENCHMARKS.md.
    println!("BENCH ");
    println!("BENCH ## notify.route (`cargo bench -p korvid-notify --bench route`)");
    println!("BENCH ");
    println!(
        "BENCH Policy exceptions + alert engine (fold, group timers, inhibition) + routing tree, one core, {NOTIFY_FINDINGS} findings for 5,000 fingerprints over a simulated hour; baseline: a HashMap count of the same findings by fingerprint, same run."
    );
    println!("BENCH ");
    println!("BENCH | stage | korvid findings/s | baseline findings/s | time ratio |");
    println!("BENCH |---|---|---|---|");
    println!(
        "BENCH | notify.route | {:.0} | {:.0} | {:.1} |",
        NOTIFY_FINDINGS as f64 / korvid,
        NOTIFY_FINDINGS as f64 / baseline,
        korvid / baseline
    );
}
