//! korvid on a Kafka that only speaks TLS with client certificates: `[kafka.security]` with
//! `protocol = "ssl"`, a private CA and a client identity. The broker (tansu) sits behind a real
//! TLS terminator that requires a client certificate and advertises only the TLS address, so
//! every Kafka connection of every service is encrypted and authenticated.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use korvid_common::broker::{BrokerSettings, find_binary};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_over_mutual_tls_to_kafka() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki_dir = dir.path().join("pki");
    pki(&pki_dir);
    let (plain, tls) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let tansu = find_binary(&BrokerSettings::default()).expect("tansu (make setup installs it)");
    let log = std::fs::File::create(dir.path().join("tansu.log")).expect("log");
    let _broker = StopOnDrop(Some(
        Command::new(tansu)
            .args(["broker", "--listener-url", &format!("tcp://{plain}")])
            // Clients learn the brokers from metadata: only the TLS address is ever handed out.
            .args(["--advertised-listener-url", &format!("tcp://{tls}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start tansu"),
    ));
    let proxy = TlsProxy::start(&pki_dir, &tls, &plain).await;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&plain).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let receiver = Receiver::start().await;
    let p = pki_dir.display();
    let cfg = KorvidConfig::with_kafka(dir.path(), &receiver.url, &tls).with_extra(&format!(
        "\n[kafka.security]\nprotocol = \"ssl\"\nca_file = \"{p}/ca.pem\"\ncert_file = \"{p}/client.pem\"\nkey_file = \"{p}/client-key.pem\"\n"
    ));
    let korvid = Korvid::start(&cfg).await;
    post_ok(
        &cfg.webhook_url(),
        exec_batch("tls-exec-1", "vault", "vault-0", "mallory", now_ms()),
    )
    .await;
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "one alert over TLS:\n{}", korvid.log_text());
    assert_eq!(got[0].body["alert"]["subject"]["name"], "vault-0");
    assert!(
        proxy.handshakes() >= 2,
        "the services connected through TLS ({} handshakes)",
        proxy.handshakes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_right_certificate_is_not_let_in() {
    // The same TLS front door refuses a korvid that trusts the CA but has no client identity:
    // start-up fails on the broker wait with a clear error instead of running unprotected.
    let dir = tempfile::tempdir().expect("tmp");
    let pki_dir = dir.path().join("pki");
    pki(&pki_dir);
    let (plain, tls) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let proxy = TlsProxy::start(&pki_dir, &tls, &plain).await;
    let p = pki_dir.display();
    let cfg = KorvidConfig::with_kafka(dir.path(), "http://127.0.0.1:9/alerts", &tls).with_extra(
        &format!("\n[kafka.security]\nprotocol = \"ssl\"\nca_file = \"{p}/ca.pem\"\n"),
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_korvid"))
        .arg("--config")
        .arg(cfg.config_path())
        .arg("up")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .expect("korvid gives up on an unreachable broker")
        .expect("run korvid");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("broker"), "the error names the broker: {err}");
    assert_eq!(
        proxy.handshakes(),
        0,
        "no handshake completed without a certificate"
    );
}
