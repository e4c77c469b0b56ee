//! The `korvid` binary: parses the command line, loads settings, starts telemetry and hands
//! over to the services. Service logic lives in the service crates.

mod demo;
mod model_cmd;
mod rules_cmd;
mod scan;
mod settings;
mod simulate_cmd;
mod sql_cmd;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::settings::KorvidSettings;

/// Threat detection for Kubernetes on Kafka.
///
/// korvid ingests API-server audit events, windows them into graph windows of the cluster,
/// runs detection rules over every window and sends deduplicated, explained alerts.
#[derive(Parser)]
#[command(
    name = "korvid",
    version,
    about,
    after_help = "Examples:\n  korvid up                                         all services on the embedded broker\n  korvid sql \"SELECT tactic, count(*) FROM findings GROUP BY 1\"\n  KORVID__KAFKA__BOOTSTRAP_SERVERS=kafka:9092 korvid detect\n  korvid --config deploy/korvid.example.toml up\n\nEvery setting is documented in deploy/korvid.example.toml."
)]
struct Cli {
    /// Configuration file (TOML or YAML). Default: ./korvid.toml when it exists. Every setting
    /// can also be given as KORVID__SECTION__KEY, e.g. KORVID__KAFKA__BOOTSTRAP_SERVERS.
    #[arg(long, short, env = "KORVID_CONFIG", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run all services in one process. Without kafka.bootstrap_servers, start the
    /// embedded local broker (tansu) with its data under data_dir, and stop it on exit.
    Up,
    /// `korvid up` plus a simulated cluster and attack campaigns replayed into it (objects
    /// imported, audit events posted to the webhook); alerts appear on standard output.
    Demo(demo::DemoArgs),
    /// Serve the API-server audit webhook and write audit events to Kafka.
    Ingest,
    /// Window audit events into graph windows of the cluster.
    Enrich,
    /// Evaluate the rule catalog over graph windows and publish findings.
    Detect,
    /// Deduplicate findings into alerts and deliver them (stdout, webhooks, Kafka).
    Notify,
    /// Write findings and alerts to the lake: Parquet partitioned by date and cluster.
    Lake,
    /// SQL over the lake (`findings`, `alerts`) and the current `inventory`, or `--serve` it
    /// over the PostgreSQL wire protocol for psql, Grafana and BI tools. See docs/sql.md.
    Sql(sql_cmd::SqlArgs),
    /// Write a snapshot of cluster objects to Kafka: `kubectl get -A -o json` output, Lists, or
    /// files and directories of YAML/JSON manifests (multi-document, Helm output included).
    /// Exits 1 when some documents were refused (they go to the dead-letter topic).
    Import {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Offline detection on files: manifests, `kubectl get -A -o json` dumps, audit logs (every
    /// format ingest reads) and Trivy/Grype reports, recognised by content, judged by the same
    /// inventory, window and rule code as the pipeline. Exit 0: nothing at or above --fail-on;
    /// 1: something is; 2: usage error or unreadable input.
    Scan {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: scan::Format,
        /// Lowest severity that makes the exit code 1 (`low`, `medium`, `high`, `critical`,
        /// or `none`).
        #[arg(long, default_value = "high", value_parser = parse_fail_on)]
        fail_on: FailOn,
        /// A file of accepted risks (overrides detect.exceptions): covered findings are left
        /// out and counted; expired exceptions are reported and no longer apply.
        #[arg(long)]
        exceptions: Option<PathBuf>,
        /// Report every window's findings (a subject found in three windows, three times)
        /// instead of one per rule and subject; for matching findings to labelled traffic.
        #[arg(long)]
        per_window: bool,
    },
    /// Write a deterministic synthetic cluster, its benign traffic and labelled attack
    /// campaigns (audit log, objects, image scans, ground truth) to a directory; `--list`
    /// shows the technique library.
    Simulate(simulate_cmd::SimulateArgs),
    /// The graph model: `featurize` writes training tables from `korvid simulate` output
    /// (see detect/model/README.md for training).
    Model {
        #[command(subcommand)]
        action: model_cmd::ModelAction,
    },
    /// Work with the rule catalog (built-in rules plus detect.rules_dirs).
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
}

/// `--fail-on`: a severity, or never.
#[derive(Clone, Copy, Debug)]
struct FailOn(Option<korvid_schemas::Severity>);

fn parse_fail_on(s: &str) -> Result<FailOn, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(FailOn(None));
    }
    korvid_schemas::Severity::parse(s)
        .map(|sev| FailOn(Some(sev)))
        .ok_or_else(|| format!("`{s}`: expected low, medium, high, critical or none"))
}

#[derive(Subcommand)]
enum RulesAction {
    /// Every rule, grouped by tactic.
    List,
    /// Run every rule's embedded positive and negative examples; exit 1 on a failure.
    Test,
    /// Check that every rule loads, plans, and has techniques, references and examples.
    Lint,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Simulate(args) = cli.command {
        return ExitCode::from(simulate_cmd::run(args));
    }
    korvid_common::install_tls_provider();
    let file = cli.config.clone().or_else(|| {
        let default = PathBuf::from("korvid.toml");
        default.exists().then_some(default)
    });
    let settings: KorvidSettings =
        match korvid_common::settings::load(file.as_deref(), std::env::vars()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("korvid: {e}");
                return ExitCode::from(2);
            }
        };
    let service = match &cli.command {
        Command::Rules { .. } => "rules",
        Command::Scan { .. } => "scan",
        Command::Simulate(_) => "simulate",
        Command::Model { .. } => "model",
        Command::Import { .. } => "import",
        Command::Up => "up",
        Command::Demo(_) => "demo",
        Command::Ingest => "ingest",
        Command::Enrich => "enrich",
        Command::Detect => "detect",
        Command::Notify => "notify",
        Command::Lake => "lake",
        Command::Sql(_) => "sql",
    };
    // Outside the runtime: the trace exporter's blocking HTTP client must be built and dropped
    // in synchronous context.
    let guard = match korvid_common::telemetry::init_logging(&settings.telemetry, service) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("korvid: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("korvid")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("korvid: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Rules { action } => {
            let ok = match action {
                RulesAction::List => Ok(rules_cmd::list(&settings)),
                RulesAction::Test => runtime.block_on(rules_cmd::test(&settings)),
                RulesAction::Lint => runtime.block_on(rules_cmd::lint(&settings)),
            };
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            drop(guard);
            return match ok {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("korvid: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Scan {
            paths,
            format,
            fail_on,
            exceptions,
            per_window,
        } => {
            let options = scan::Options {
                format,
                fail_on: fail_on.0,
                exceptions: exceptions.or_else(|| settings.detect.exceptions.clone()),
                per_window,
            };
            let code = runtime.block_on(scan::run(&paths, &options, &settings));
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            drop(guard);
            return match code {
                Ok(c) => ExitCode::from(c),
                Err(e) => {
                    eprintln!("korvid scan: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Sql(args) => {
            let code = runtime.block_on(sql_cmd::run(args, &settings));
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            drop(guard);
            return ExitCode::from(code);
        }
        Command::Import { paths } => runtime.block_on(up::import(&paths, settings)),
        Command::Model { action } => runtime.block_on(model_cmd::run(action, &settings)),
        Command::Demo(args) => runtime.block_on(demo::run(args, settings)),
        _ => runtime.block_on(up::run(service, settings)),
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    drop(guard);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("korvid: {e:#}");
            ExitCode::FAILURE
        }
    }
}
