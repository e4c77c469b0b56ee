//! Every server korvid runs besides the audit webhook (tested in e2e.rs) can take TLS and
//! authentication: the telemetry endpoints (`/metrics`, `/healthz`, `/readyz`) with TLS, client
//! certificates and a bearer token, and `korvid sql --serve` with TLS and a SCRAM-SHA-256
//! password, driven by real clients (reqwest, Debian's psql) against the real binary.

mod support;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "e2e-token-0123456789abcdef";
const PASSWORD: &str = "sql-tls-password";

/// A korvid child process, stopped even when an assertion fails first.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            stop(c);
        }
    }
}

/// Starts `korvid ARGS` with `config` and waits until it accepts connections on `port`.
async fn start(config: &Path, args: &[&str], port: u16) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_korvid"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn korvid");
    let mut running = Running(Some(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let child = running.0.as_mut().expect("child");
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("korvid {args:?} exited early ({status}):\n{err}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return running;
        }
        assert!(Instant::now() < deadline, "korvid {args:?} did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A service config whose Kafka is a closed port: the service waits for it (and is not ready)
/// while its telemetry server answers.
fn telemetry_config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    let pki_dir = dir.join("pki");
    let config = dir.join(format!("korvid-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\n\
             [kafka]\nbootstrap_servers = \"127.0.0.1:{dead}\"\n\
             [telemetry]\nlisten = \"127.0.0.1:{port}\"\nlog_level = \"warn\"\n\
             bearer_token_file = \"{pki}/token\"\n{extra}\n\
             [telemetry.tls]\ncert_file = \"{pki}/server.pem\"\nkey_file = \"{pki}/server-key.pem\"\n\
             client_ca_file = \"{pki}/ca.pem\"\n",
            data = dir.join("data").display(),
            dead = free_port(),
            pki = pki_dir.display(),
        ),
    )
    .expect("config");
    config
}

async fn status(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let code = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let body = resp.text().await.unwrap_or_default();
    if code == 401 {
        assert_eq!(challenge.as_deref(), Some("Bearer"), "{url}");
    }
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_takes_tls_client_certificates_and_a_token() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca_pem, identity_pem) = pki(&dir.path().join("pki"));
    let _ = http(); // installs the TLS provider
    let trusted = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca")])
        .identity(reqwest::Identity::from_pem(identity_pem.as_bytes()).expect("identity"))
        .build()
        .expect("client");

    // Default: the token guards /metrics, the probes stay open for the kubelet.
    let port = free_port();
    let config = telemetry_config(dir.path(), port, "");
    let service = start(&config, &["enrich"], port).await;
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");

    let (code, _) = status(&trusted, &url("/metrics"), None).await;
    assert_eq!(code, 401, "/metrics without a token");
    let (code, _) = status(
        &trusted,
        &url("/metrics"),
        Some("e2e-token-0123456789abcdeX"),
    )
    .await;
    assert_eq!(code, 401, "/metrics with a wrong token");
    let (code, body) = status(&trusted, &url("/metrics"), Some(TOKEN)).await;
    assert_eq!(code, 200, "/metrics with the token");
    assert!(body.contains("# EOF"), "an OpenMetrics exposition: {body}");
    let (code, body) = status(&trusted, &url("/healthz"), None).await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = status(&trusted, &url("/readyz"), None).await;
    assert_eq!(code, 503, "Kafka is unreachable, so not ready: {body}");
    assert!(body.contains("kafka"), "{body}");

    // Without a client certificate, or over plain HTTP, nothing is served.
    let anonymous = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca")])
        .build()
        .expect("client");
    let refused = anonymous
        .get(url("/healthz"))
        .bearer_auth(TOKEN)
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got {refused:?}"
    );
    let plain = http()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        !matches!(&plain, Ok(r) if r.status().is_success()),
        "plain HTTP got {plain:?}"
    );
    drop(service);

    // probes_require_token: the probes need the token too.
    let port = free_port();
    let config = telemetry_config(dir.path(), port, "probes_require_token = true");
    let _service = start(&config, &["enrich"], port).await;
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (code, _) = status(&trusted, &url(path), None).await;
        assert_eq!(code, 401, "{path} without a token");
    }
    let (code, _) = status(&trusted, &url("/healthz"), Some(TOKEN)).await;
    assert_eq!(code, 200);
}

#[test]
fn telemetry_security_settings_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tmp");
    pki(&dir.path().join("pki"));
    let run = |extra: &str, token: &str| {
        std::fs::write(dir.path().join("pki/token"), token).expect("token");
        let port = free_port();
        let config = telemetry_config(dir.path(), port, extra);
        Command::new(env!("CARGO_BIN_EXE_korvid"))
            .arg("--config")
            .arg(config)
            .arg("enrich")
            .output()
            .expect("run korvid")
    };
    let failed = |out: &Output| {
        assert!(!out.status.success(), "should not start");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = failed(&run("", "short\n"));
    assert!(
        err.contains("telemetry.bearer_token_file") && err.contains("16 characters"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("pki/server-key.pem")).expect("rm key");
    let err = failed(&run("", TOKEN));
    assert!(
        err.contains("telemetry.tls.key_file") && err.contains("server-key.pem"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_serve_takes_tls_and_a_scram_password() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki_dir = dir.path().join("pki");
    pki(&pki_dir);
    std::fs::write(dir.path().join("sql-password"), format!("{PASSWORD}\n")).expect("password");
    let config = dir.path().join("korvid.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{data}\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:{dead}\"\n\
             [telemetry]\nlisten = \"\"\nlog_level = \"warn\"\n\
             [sql]\nlisten = \"127.0.0.1:{port}\"\npassword_file = \"{dir}/sql-password\"\n\
             [sql.tls]\ncert_file = \"{pki}/server.pem\"\nkey_file = \"{pki}/server-key.pem\"\n",
            data = dir.path().join("data").display(),
            dead = free_port(),
            dir = dir.path().display(),
            pki = pki_dir.display(),
        ),
    )
    .expect("config");
    let _server = start(&config, &["sql", "--serve"], port).await;
    let ca = pki_dir.join("ca.pem");
    let ca = ca.to_str().expect("utf-8 path");
    let verified = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca)];

    // TLS verified against our CA, the password over SCRAM: the query is answered.
    let out = psql(port, PASSWORD, &verified, "SELECT count(*) FROM findings");
    assert!(
        out.status.success(),
        "psql over TLS failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    let out = psql(port, PASSWORD, &verified, "\\conninfo");
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains("SSL connection"), "{info}");

    // Channel binding (SCRAM-SHA-256-PLUS) ties the password exchange to this TLS session.
    let bound = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", ca),
        ("PGCHANNELBINDING", "require"),
    ];
    let out = psql(port, PASSWORD, &bound, "SELECT 1");
    assert!(
        out.status.success(),
        "channel binding failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A wrong password over TLS, and any client without TLS, are refused.
    let out = psql(port, "wrong-password", &verified, "SELECT 1");
    assert!(!out.status.success(), "a wrong password must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    let out = psql(port, PASSWORD, &[("PGSSLMODE", "disable")], "SELECT 1");
    assert!(!out.status.success(), "a plain connection must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("accepts only TLS connections"), "{err}");
}
