//! The findings lake end to end: `korvid up` writes findings and alerts as Parquet, `korvid sql`
//! answers over them (and the inventory), and a real `psql` queries `korvid sql --serve`.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use korvid_schemas::{Decoder, Finding};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "lake-test-password";

fn korvid_sql(cfg: &KorvidConfig, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_korvid"))
        .arg("--config")
        .arg(cfg.config_path())
        .arg("sql")
        .args(args)
        .env("KORVID__KAFKA__BOOTSTRAP_SERVERS", cfg.bootstrap())
        .output()
        .expect("run korvid sql")
}

fn stdout_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "korvid sql failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `korvid sql --serve` child, stopped even when an assertion fails first.
struct Server(Option<std::process::Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            stop(c);
        }
    }
}

/// Waits until something accepts connections on `port`.
async fn wait_for_port(port: u16, server: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = server.try_wait() {
            panic!("korvid sql --serve exited early: {status}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "korvid sql --serve did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_land_in_the_lake_and_answer_sql_and_psql() {
    let dir = tempfile::tempdir().expect("tmp");
    let receiver = Receiver::start().await;
    let cfg = KorvidConfig::new(dir.path(), &receiver.url).with_extra(&format!(
        "[lake]\nroll_records = 1000\nroll_interval_ms = 300\nretention_days = 30\n\n\
         [sql]\npassword = \"{PASSWORD}\"\nkafka_timeout_ms = 5000\n"
    ));
    let lake = dir.path().join("data/lake");
    // A partition far past retention: deleted when the writer starts.
    let expired = lake.join("findings/date=2001-01-01/cluster=e2e");
    std::fs::create_dir_all(&expired).expect("old partition");
    let korvid = Korvid::start(&cfg).await;

    // Two execs, each in its own namespace (its own window key): two findings, two alerts.
    let now = now_ms();
    post_ok(
        &cfg.webhook_url(),
        exec_batch("lake-1", "shop", "web-0", "mallory", now),
    )
    .await;
    post_ok(
        &cfg.webhook_url(),
        exec_batch("lake-2", "billing", "api-0", "mallory", now),
    )
    .await;
    let alerts = receiver.wait_for(2, WAIT).await;
    assert_eq!(alerts.len(), 2, "{}", korvid.log_text());

    // Something undecodable on the findings topic is dead-lettered by the lake writer too.
    produce_raw(&cfg.bootstrap(), "korvid.findings.v1", "junk", b"not avro").await;

    // The lake holds exactly what the findings topic holds.
    let decoder = Decoder::<Finding>::new();
    let findings: Vec<Finding> = read_topic(&cfg.bootstrap(), "korvid.findings.v1")
        .iter()
        .filter_map(|v| decoder.decode(v).ok())
        .collect();
    assert!(findings.len() >= 2, "{findings:?}");
    let rows = wait_metric(
        &cfg,
        "korvid_lake_rows_written",
        "table=\"findings\"",
        findings.len() as f64,
        WAIT,
    )
    .await;
    assert_eq!(rows, findings.len() as f64, "{}", korvid.log_text());
    let alert_rows = wait_metric(
        &cfg,
        "korvid_lake_rows_written",
        "table=\"alerts\"",
        2.0,
        WAIT,
    )
    .await;
    assert_eq!(alert_rows, 2.0, "{}", korvid.log_text());
    let dead = wait_metric(&cfg, "korvid_deadletters", "stage=\"lake\"", 1.0, WAIT).await;
    assert_eq!(
        dead, 1.0,
        "the junk record is dead-lettered once by the lake"
    );
    assert!(
        !expired.exists(),
        "retention removes expired date partitions"
    );

    // Files: Hive partitions, final names only.
    let files = files_under(&lake.join("findings"));
    assert!(!files.is_empty());
    for f in &files {
        let rel = f.strip_prefix(&lake).expect("under the lake");
        let parts: Vec<_> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(parts[0], "findings");
        assert!(parts[1].starts_with("date=20"), "{rel:?}");
        assert_eq!(parts[2], "cluster=e2e");
        assert!(
            parts[3].starts_with("part-") && parts[3].ends_with(".parquet"),
            "{rel:?}"
        );
    }

    // `korvid sql`: the counts by tactic and severity are the topic's.
    let mut expected: BTreeMap<(String, String), usize> = BTreeMap::new();
    for f in &findings {
        *expected
            .entry((f.tactic.as_str().into(), f.severity.as_str().into()))
            .or_default() += 1;
    }
    let csv: String = expected
        .iter()
        .map(|((t, s), n)| format!("{t},{s},{n}\r\n"))
        .collect();
    let out = korvid_sql(
        &cfg,
        &[
            "--format",
            "csv",
            "SELECT tactic, severity, count(*) AS n FROM findings GROUP BY 1, 2 ORDER BY 1, 2",
        ],
    );
    assert_eq!(stdout_ok(&out), format!("tactic,severity,n\r\n{csv}"));

    let out = korvid_sql(
        &cfg,
        &[
            "--format",
            "json",
            "SELECT subject_namespace, subject_name, rule_id, cluster, event_time \
             FROM findings WHERE rule_id = 'KOR-0001' ORDER BY subject_namespace",
        ],
    );
    let lines: Vec<serde_json::Value> = stdout_ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["subject_namespace"], "billing");
    assert_eq!(lines[0]["subject_name"], "api-0");
    assert_eq!(lines[1]["subject_name"], "web-0");
    assert_eq!(lines[1]["cluster"], "e2e");

    let out = korvid_sql(
        &cfg,
        &["SELECT status, occurrences, subject_name FROM alerts ORDER BY subject_name"],
    );
    let table = stdout_ok(&out);
    assert!(table.contains("firing"), "{table}");
    assert!(
        table.contains("api-0") && table.contains("web-0"),
        "{table}"
    );
    assert!(table.ends_with("(2 rows)\n"), "{table}");

    // The inventory: what an import put on the objects topic.
    let snapshot = dir.path().join("pods.json");
    std::fs::write(
        &snapshot,
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [{
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "uid-web-0",
                          "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}
        }]})
        .to_string(),
    )
    .expect("snapshot");
    let imported = korvid_import(&cfg, &snapshot);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let out = korvid_sql(
        &cfg,
        &[
            "--format",
            "csv",
            "SELECT kind, namespace, name, uid, labels FROM inventory WHERE name = 'web-0'",
        ],
    );
    assert_eq!(
        stdout_ok(&out),
        "kind,namespace,name,uid,labels\r\nPod,shop,web-0,uid-web-0,\"{\"\"app\"\":\"\"web\"\"}\"\r\n"
    );

    // Bad SQL: exit 1 and a message that says so.
    let out = korvid_sql(&cfg, &["SELEC tactic FROM findings"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SQL syntax error"), "{err}");
    let out = korvid_sql(&cfg, &["SELECT nope FROM findings"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    let out = korvid_sql(&cfg, &["DROP TABLE findings"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));

    // `korvid sql --serve` and a real psql.
    let port = free_port();
    let server = Command::new(env!("CARGO_BIN_EXE_korvid"))
        .arg("--config")
        .arg(cfg.config_path())
        .args(["sql", "--serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("KORVID__KAFKA__BOOTSTRAP_SERVERS", cfg.bootstrap())
        .env("KORVID__TELEMETRY__LISTEN", "")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn korvid sql --serve");
    let mut server = Server(Some(server));
    if let Some(child) = server.0.as_mut() {
        wait_for_port(port, child).await;
    }

    let out = psql(
        port,
        PASSWORD,
        &[],
        "SELECT tactic, severity, count(*) FROM findings GROUP BY 1, 2",
    );
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    got.sort();
    let want: Vec<String> = expected
        .iter()
        .map(|((t, s), n)| format!("{t}|{s}|{n}"))
        .collect();
    assert_eq!(got, want);
    assert!(want.iter().any(|l| l.starts_with("execution|")), "{want:?}");

    // Types reach psql as PostgreSQL types: a timestamptz and a float compare as such.
    let out = psql(
        port,
        PASSWORD,
        &[],
        "SELECT count(*) FROM findings WHERE event_time > TIMESTAMP '2020-01-01T00:00:00Z' AND score > 0",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        findings.len().to_string(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql(
        port,
        PASSWORD,
        &[],
        "SELECT min(first_seen) <= max(last_seen), sum(occurrences) >= 2 FROM alerts",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t|t");

    // Errors come back as PostgreSQL errors; the connection-level password is enforced.
    let out = psql(port, PASSWORD, &[], "SELECT nope FROM findings");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    let out = psql(port, "wrong", &[], "SELECT 1");
    assert!(!out.status.success(), "a wrong password must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");

    drop(server);
    drop(korvid);
}

#[test]
fn an_empty_lake_answers_and_inventory_without_kafka_fails_clearly() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("korvid.toml");
    let dead = free_port();
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}/data\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:{dead}\"\n\
             [telemetry]\nlisten = \"\"\n[sql]\nkafka_timeout_ms = 1000\n",
            dir.path().display()
        ),
    )
    .expect("config");
    let run = |query: &str| {
        Command::new(env!("CARGO_BIN_EXE_korvid"))
            .arg("--config")
            .arg(&config)
            .args(["sql", "--format", "csv", query])
            .output()
            .expect("run korvid sql")
    };

    let out = run("SELECT count(*) AS n FROM findings");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\r\n0\r\n");
    let out = run("SELECT id, status, date, cluster FROM alerts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "id,status,date,cluster\r\n"
    );

    let out = run("SELECT count(*) FROM inventory");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("inventory") && err.contains("Kafka") && err.contains(&dead.to_string()),
        "{err}"
    );
}
