//! Graph-model inference with ONNX Runtime (`cargo bench --bench model`, or `make bench-model`
//! which then runs the same inputs through PyTorch eager and prints the ratio).
//!
//! For windows of 50, 500 and 5,000 entities: batches formed as detect forms them (disjoint
//! unions up to the batch budgets), timed through `Model::run` (one batch at a time: graphs/s,
//! median and p99 batch latency), and through the `Batcher` with every window submitted at once
//! (graphs/s, p99 latency from submit to answer). The inputs and figures are written to
//! KORVID_BENCH_DIR (default `target/bench-model`) for the PyTorch side.
//!
//! KORVID_BENCH_THREADS: threads per inference (default 2, the machine's cores).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use korvid_detect::model::features::{RELATIONS, feature_count};
use korvid_detect::model::runtime::BUILTIN_MODEL;
use korvid_detect::model::{
    BatchMetrics, BatchOptions, Batcher, Model, RuntimeOptions, WindowGraph,
};

/// SplitMix64, for inputs that are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A window-shaped graph: one kind per entity, a few flags and counts, about two relations per
/// entity (the simulated windows' ratio).
fn graph(nodes: usize, rng: &mut Rng) -> WindowGraph {
    let width = feature_count();
    let mut features = vec![0f32; nodes * width];
    for i in 0..nodes {
        let row = &mut features[i * width..(i + 1) * width];
        row[rng.below(27)] = 1.0;
        for _ in 0..6 {
            row[27 + rng.below(width - 27)] = (rng.below(40) as f32) / 10.0;
        }
    }
    let edges = nodes * 2;
    WindowGraph {
        node_ids: (0..nodes).map(|i| format!("Pod/bench/{i}")).collect(),
        features,
        edge_src: (0..edges).map(|_| rng.below(nodes) as i64).collect(),
        edge_dst: (0..edges).map(|_| rng.below(nodes) as i64).collect(),
        edge_type: (0..edges)
            .map(|_| rng.below(RELATIONS.len() + 1) as i64)
            .collect(),
    }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Inputs for the PyTorch side: little-endian, per graph `nodes, edges` (u32) then features
/// (f32), sources, destinations and relations (i64).
fn write_inputs(path: &std::path::Path, sets: &[(usize, usize, Vec<WindowGraph>)]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("inputs file"));
    for (_, per_batch, graphs) in sets {
        f.write_all(&(graphs.len() as u32).to_le_bytes())
            .expect("write");
        f.write_all(&(*per_batch as u32).to_le_bytes())
            .expect("write");
        for g in graphs {
            f.write_all(&(g.node_count() as u32).to_le_bytes())
                .expect("write");
            f.write_all(&(g.edge_src.len() as u32).to_le_bytes())
                .expect("write");
            for x in &g.features {
                f.write_all(&x.to_le_bytes()).expect("write");
            }
            for v in g.edge_src.iter().chain(&g.edge_dst).chain(&g.edge_type) {
                f.write_all(&v.to_le_bytes()).expect("write");
            }
        }
    }
}

fn main() {
    let threads: usize = std::env::var("KORVID_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let dir = std::env::var("KORVID_BENCH_DIR").map_or_else(
        |_| std::path::PathBuf::from("target/bench-model"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("bench dir");
    let runtime = RuntimeOptions {
        intra_threads: threads,
        ..RuntimeOptions::default()
    };
    let mut model = Model::load(BUILTIN_MODEL, &runtime).unwrap_or_else(|e| panic!("{e}"));
    let budget = BatchOptions::default();
    let mut rng = Rng(17);
    // (entities per window, windows per batch, windows)
    let sets: Vec<(usize, usize, Vec<WindowGraph>)> = [(50usize, 256usize), (500, 64), (5000, 8)]
        .into_iter()
        .map(|(n, count)| {
            let per_batch = (budget.max_nodes / n).clamp(1, budget.max_graphs);
            (
                n,
                per_batch,
                (0..count).map(|_| graph(n, &mut rng)).collect(),
            )
        })
        .collect();
    write_inputs(&dir.join("model-inputs.bin"), &sets);

    let runt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut results = Vec::new();
    println!(
        "graph model inference, ONNX Runtime {}, {threads} threads per inference",
        korvid_detect::model::runtime::RUNTIME_VERSION
    );
    println!(
        "{:>8} {:>9} {:>14} {:>15} {:>15} {:>18} {:>18}",
        "entities",
        "per batch",
        "run graphs/s",
        "run median ms",
        "run p99 ms",
        "batcher graphs/s",
        "batcher p99 ms"
    );
    for (n, per_batch, graphs) in &sets {
        let refs: Vec<&WindowGraph> = graphs.iter().collect();
        // Warm up, then time every batch over enough rounds for a stable p99.
        let _ = model.run(&refs[..*per_batch]).expect("inference");
        let mut latencies = Vec::new();
        let started = Instant::now();
        let mut done = 0usize;
        while started.elapsed() < Duration::from_secs(4) || latencies.len() < 20 {
            for chunk in refs.chunks(*per_batch) {
                let t = Instant::now();
                let _ = model.run(chunk).expect("inference");
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                done += chunk.len();
            }
        }
        let run_rate = done as f64 / started.elapsed().as_secs_f64();
        let run_median = percentile(latencies.clone(), 0.5);
        let run_p99 = percentile(latencies, 0.99);

        let batcher = Arc::new(
            Batcher::start(
                BUILTIN_MODEL,
                &runtime,
                BatchOptions {
                    workers: 1,
                    ..BatchOptions::default()
                },
                BatchMetrics::unregistered(),
            )
            .expect("batcher"),
        );
        let shared: Vec<Arc<WindowGraph>> = graphs.iter().cloned().map(Arc::new).collect();
        let (rate, p99) = runt.block_on(async {
            let mut lat = Vec::new();
            let started = Instant::now();
            let mut done = 0usize;
            while started.elapsed() < Duration::from_secs(4) || lat.len() < 100 {
                let tasks: Vec<_> = shared
                    .iter()
                    .map(|g| {
                        let (b, g) = (batcher.clone(), g.clone());
                        tokio::spawn(async move {
                            let t = Instant::now();
                            b.score(g).await.expect("scored");
                            t.elapsed().as_secs_f64() * 1e3
                        })
                    })
                    .collect();
                for t in tasks {
                    lat.push(t.await.expect("task"));
                    done += 1;
                }
            }
            (
                done as f64 / started.elapsed().as_secs_f64(),
                percentile(lat, 0.99),
            )
        });
        println!(
            "{n:>8} {per_batch:>9} {run_rate:>14.1} {run_median:>15.2} {run_p99:>15.2} {rate:>18.1} {p99:>18.2}"
        );
        results.push(serde_json::json!({
            "entities": n, "per_batch": per_batch, "run_graphs_per_s": run_rate,
            "run_median_ms": run_median, "run_p99_ms": run_p99,
            "batcher_graphs_per_s": rate, "batcher_p99_ms": p99,
        }));
    }
    let out = serde_json::json!({ "threads": threads, "ort": results });
    std::fs::write(
        dir.join("ort.json"),
        serde_json::to_vec_pretty(&out).expect("json"),
    )
    .expect("write results");
}
