//! `korvid demo`: `korvid up` with a simulated cluster and attack campaigns replayed into it,
//! through the same doors real data uses: the objects are imported to Kafka like
//! `korvid import`, the audit events are POSTed to the audit webhook like a kube-apiserver
//! would. Alerts appear on standard output within seconds; the ground truth is printed first so
//! they can be checked against it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use korvid_simulate::{SimConfig, Simulation};

use crate::settings::KorvidSettings;

/// `korvid demo` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Simulation seed (the same seed replays the same cluster and campaigns).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Attack campaigns to replay.
    #[arg(long, default_value_t = 2)]
    pub campaigns: usize,
    /// Simulated minutes of cluster life (benign traffic around the campaigns).
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Replay speed: simulated seconds per real second.
    #[arg(long, default_value_t = 30.0)]
    pub speed: f64,
}

/// Runs korvid and the replay until Ctrl-C or SIGTERM.
pub async fn run(args: DemoArgs, settings: KorvidSettings) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.speed > 0.0 && args.minutes > 0,
        "--speed and --minutes must be positive"
    );
    let duration_s = args.minutes * 60;
    // The simulated clock ends now: events are as fresh as a live cluster's.
    let start_ms = korvid_common::now_millis() - (duration_s as i64) * 1000;
    let sim = korvid_simulate::simulate(&SimConfig {
        seed: args.seed,
        namespaces: 4,
        pods_per_namespace: 4,
        duration_s,
        campaigns: args.campaigns,
        start_ms,
        ..SimConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("simulating the demo cluster: {e}"))?;
    let dir = settings.data_dir.join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    sim.write_dir(&dir)
        .map_err(|e| anyhow::anyhow!("writing the demo cluster: {e}"))?;
    let replay = tokio::spawn(replay(sim, dir, settings.clone(), args));
    let result = crate::up::run("up", settings).await;
    replay.abort();
    result
}

async fn replay(
    sim: Simulation,
    dir: std::path::PathBuf,
    settings: KorvidSettings,
    args: DemoArgs,
) {
    if let Err(e) = replay_inner(&sim, &dir, &settings, &args).await {
        tracing::error!(error = %format!("{e:#}"), "demo replay failed; korvid keeps running");
    }
}

async fn replay_inner(
    sim: &Simulation,
    dir: &Path,
    settings: &KorvidSettings,
    args: &DemoArgs,
) -> anyhow::Result<()> {
    let webhook = &settings.ingest.audit_webhook;
    anyhow::ensure!(
        webhook.enabled && webhook.tls.is_none() && webhook.bearer_token_file.is_none(),
        "the demo posts to a plain-HTTP audit webhook without a token; run it on the default \
         settings"
    );
    let url = format!("http://{}/audit/webhook", webhook.listen);
    // Ready when the webhook answers (the broker and topics come first in `up`).
    let deadline = Instant::now() + Duration::from_secs(120);
    while tokio::net::TcpStream::connect(&webhook.listen)
        .await
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "korvid did not start within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut with_kafka = settings.clone();
    with_kafka
        .kafka
        .bootstrap_servers
        .get_or_insert_with(|| settings.broker.listen.clone());
    crate::up::import(&[dir.join("cluster.json")], with_kafka)
        .await
        .context("importing the demo cluster's objects")?;

    let attacks: Vec<_> = sim.labels.iter().filter(|l| l.malicious).collect();
    println!(
        "\nkorvid demo: {} objects, {} audit events over {} simulated minutes, replayed at {}x; \
         {} attack steps:",
        sim.cluster.objects.len(),
        sim.audit.len(),
        args.minutes,
        args.speed,
        attacks.len()
    );
    for l in &attacks {
        println!(
            "  {} step {}: {} ({})",
            l.campaign.as_deref().unwrap_or("-"),
            l.step.unwrap_or(0),
            l.description,
            l.technique
        );
    }
    println!("alerts follow as korvid raises them; Ctrl-C stops.\n");

    let client = reqwest::Client::new();
    let first = sim.audit.first().map_or(0, |a| a.at_ms);
    let started = Instant::now();
    let mut pending: Vec<serde_json::Value> = Vec::new();
    for (i, line) in sim.audit.iter().enumerate() {
        let due = Duration::from_secs_f64((line.at_ms - first) as f64 / 1000.0 / args.speed);
        let now = started.elapsed();
        if due > now {
            post(&client, &url, &mut pending).await?;
            tokio::time::sleep(due - now).await;
        }
        pending.push(serde_json::from_str(&line.json).context("a simulated event")?);
        if pending.len() >= 500 || i + 1 == sim.audit.len() {
            post(&client, &url, &mut pending).await?;
        }
    }
    println!(
        "\nkorvid demo: replay finished ({} events in {:.0} s); korvid keeps running, Ctrl-C \
         stops. Ground truth: {}",
        sim.audit.len(),
        started.elapsed().as_secs_f64(),
        dir.join("labels.jsonl").display()
    );
    Ok(())
}

/// POSTs the pending events as one audit EventList, as the API server's webhook backend does.
async fn post(
    client: &reqwest::Client,
    url: &str,
    pending: &mut Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let body = serde_json::json!({
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "items": std::mem::take(pending),
    });
    let resp = client
        .post(url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("posting to {url}"))?;
    anyhow::ensure!(
        resp.status().is_success(),
        "the audit webhook answered {}",
        resp.status()
    );
    Ok(())
}
