//! `korvid simulate`: writes a synthetic cluster, its traffic and labelled attack campaigns to a
//! directory (see the `korvid-simulate` crate), or lists the technique library.

use std::path::PathBuf;

use korvid_simulate::{SimConfig, simulate, techniques::LIBRARY};

/// Options of `korvid simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Output directory (cluster.json, audit.log, scans/, labels.jsonl, summary.json).
    #[arg(long, required_unless_present = "list")]
    out: Option<PathBuf>,
    /// Seed: the same seed and options give byte-identical output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Application namespaces.
    #[arg(long, default_value_t = 8)]
    namespaces: usize,
    /// Pods per application namespace (about).
    #[arg(long, default_value_t = 6)]
    pods_per_namespace: usize,
    /// Simulated seconds.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Benign audit events per second.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Attack campaigns spread over the duration.
    #[arg(long, default_value_t = 3)]
    campaigns: usize,
    /// A technique campaigns must not use (repeatable), e.g. to hold it out of training.
    #[arg(long)]
    exclude: Vec<String>,
    /// Use only these techniques (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// List the technique library and exit.
    #[arg(long)]
    list: bool,
}

/// Runs the command; the exit code (0 written, 2 bad options or unwritable output).
pub fn run(args: SimulateArgs) -> u8 {
    if args.list {
        for t in LIBRARY {
            println!(
                "{:<48} {:<22} {:<22} {}",
                t.id,
                t.tactic,
                t.mitre.join(","),
                t.name
            );
        }
        println!("{} techniques", LIBRARY.len());
        return 0;
    }
    let config = SimConfig {
        seed: args.seed,
        namespaces: args.namespaces,
        pods_per_namespace: args.pods_per_namespace,
        duration_s: args.duration,
        rate: args.rate,
        campaigns: args.campaigns,
        exclude: args.exclude,
        only: args.only,
        ..SimConfig::default()
    };
    let Some(out) = args.out else {
        eprintln!("korvid simulate: --out is required");
        return 2;
    };
    let result = simulate(&config).and_then(|sim| sim.write_dir(&out).map(|()| sim));
    match result {
        Ok(sim) => {
            println!("{}", sim.summary());
            0
        }
        Err(e) => {
            eprintln!("korvid simulate: {e}");
            2
        }
    }
}
