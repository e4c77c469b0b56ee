//! `korvid demo`: the embedded stack plus a replayed simulated campaign; alerts about the
//! attack's entities reach a real HTTP receiver within seconds of the replay.

mod support;

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_replays_a_campaign_and_alerts_on_its_entities() {
    let dir = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start().await;
    let cfg = KorvidConfig::new(dir.path(), &receiver.url);
    let stdout_path = dir.path().join("demo.out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_korvid"))
        .arg("--config")
        .arg(cfg.config_path())
        .args(["demo", "--minutes", "4", "--speed", "60", "--seed", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(&stdout_path).expect("stdout file"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("demo.err")).expect("stderr file"),
        ))
        .spawn()
        .expect("spawn korvid demo");
    let out = || {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&stdout_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    };
    let err = || std::fs::read_to_string(dir.path().join("demo.err")).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(120);
    while !out().contains("replay finished") {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("korvid demo exited ({status}):\n{}\n{}", out(), err());
        }
        assert!(
            Instant::now() < deadline,
            "no replay:\n{}\n{}",
            out(),
            err()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let finished = Instant::now();
    assert!(out().contains("attack steps:"), "{}", out());

    // The ground truth the demo printed, from the file it wrote.
    let labels =
        std::fs::read_to_string(dir.path().join("data/demo/labels.jsonl")).expect("labels written");
    let attacked: BTreeSet<String> = labels
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["malicious"] == true)
        .flat_map(|l| {
            l["entities"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| e.as_str().map(str::to_string))
        })
        .collect();
    let subject = |a: &serde_json::Value| {
        format!(
            "{}/{}/{}",
            a["subject"]["kind"].as_str().unwrap_or_default(),
            a["subject"]["namespace"].as_str().unwrap_or_default(),
            a["subject"]["name"].as_str().unwrap_or_default()
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let on_attack = loop {
        let hits: Vec<String> = receiver
            .deliveries()
            .iter()
            .map(|d| subject(&d.body["alert"]))
            .filter(|s| attacked.contains(s))
            .collect();
        if !hits.is_empty() || Instant::now() > deadline {
            break hits;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "{} alerts, {} on attacked entities, the first {:?} after the replay ended",
        receiver.deliveries().len(),
        on_attack.len(),
        finished.elapsed()
    );
    assert!(
        !on_attack.is_empty(),
        "no alert on an attacked entity ({attacked:?}):\n{}",
        out()
    );
    assert!(out().contains("tactic:"), "alerts are printed:\n{}", out());
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}
