//! `korvid sql`: one query over the lake printed as a table, CSV or JSON lines, or `--serve`
//! the lake over the PostgreSQL wire protocol. The engine lives in `korvid-lake`.

use std::time::Duration;

use arrow::array::Array;
use arrow::datatypes::{DataType, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use korvid_common::Telemetry;
use korvid_common::kafka::KafkaContext;
use korvid_lake::{InventorySource, LakeSql, QueryOutput};

use crate::settings::KorvidSettings;

/// How `korvid sql` prints rows.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, for people.
    Table,
    /// One JSON object per row (JSON lines).
    Json,
    /// RFC 4180 CSV with a header row.
    Csv,
}

/// `korvid sql` arguments.
#[derive(clap::Args)]
pub struct SqlArgs {
    /// The query, e.g. "SELECT tactic, severity, count(*) FROM findings GROUP BY 1, 2".
    /// Tables: findings, alerts, inventory (docs/sql.md).
    #[arg(required_unless_present = "serve", conflicts_with = "serve")]
    query: Option<String>,
    /// Serve the lake over the PostgreSQL wire protocol (psql, Grafana, BI tools) until
    /// SIGTERM or Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Address to serve on (default: sql.listen, 127.0.0.1:5433).
    #[arg(long, requires = "serve")]
    listen: Option<String>,
    /// Output format of a query.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// Runs `korvid sql`; returns the exit code: 0 answered (or served until stopped), 1 the query
/// failed, 2 the setup failed.
pub async fn run(args: SqlArgs, settings: &KorvidSettings) -> u8 {
    let engine = match engine(settings) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("korvid sql: {e}");
            return 2;
        }
    };
    if args.serve {
        let listen = args.listen.unwrap_or_else(|| settings.sql.listen.clone());
        return match serve(engine, &listen, settings).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("korvid sql: {e:#}");
                2
            }
        };
    }
    let query = args.query.unwrap_or_default();
    match engine.query(&query).await {
        Ok(output) => {
            let text = match args.format {
                Format::Table => table(&output),
                Format::Csv => csv(&output),
                Format::Json => json_lines(&output),
            };
            match text {
                Ok(t) => {
                    print!("{t}");
                    0
                }
                Err(e) => {
                    eprintln!("korvid sql: formatting the result: {e}");
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("korvid sql: {e}");
            1
        }
    }
}

/// The engine over `lake.dir`, with the inventory read from `kafka.bootstrap_servers` (or the
/// embedded broker `korvid up` starts).
fn engine(settings: &KorvidSettings) -> Result<LakeSql, korvid_lake::SqlError> {
    let bootstrap = settings
        .kafka
        .bootstrap_servers
        .clone()
        .unwrap_or_else(|| settings.broker.listen.clone());
    let kafka = KafkaContext::new(settings.kafka.clone(), bootstrap, &Telemetry::new());
    let inventory = InventorySource {
        kafka,
        timeout: Duration::from_millis(settings.sql.kafka_timeout_ms),
    };
    LakeSql::new(
        &settings.lake.dir(&settings.data_dir),
        inventory,
        Duration::from_millis(settings.sql.query_timeout_ms),
    )
}

async fn serve(engine: LakeSql, listen: &str, settings: &KorvidSettings) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("`{listen}` is not host:port"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let password = settings.sql.password()?;
    let (tls, certificate) = match &settings.sql.tls {
        Some(t) => {
            let mut config = t.server_config()?;
            // libpq 17+ offers ALPN `postgresql`; older clients offer none, which also passes.
            config.alpn_protocols = vec![b"postgresql".to_vec()];
            let pem = std::fs::read(&t.cert_file)
                .with_context(|| format!("sql.tls.cert_file {}", t.cert_file.display()))?;
            (Some(std::sync::Arc::new(config)), Some(pem))
        }
        None => (None, None),
    };
    let shutdown = korvid_common::Shutdown::new();
    shutdown.listen_for_signals();
    let auth = match (&password, &tls) {
        (Some(_), Some(_)) => "TLS only, SCRAM-SHA-256 password",
        (Some(_), None) => "SCRAM-SHA-256 password, no TLS",
        (None, Some(_)) => "TLS only, no password",
        (None, None) => "no TLS, no password",
    };
    tracing::info!(%bound, auth, lake = %settings.lake.dir(&settings.data_dir).display(), "serving SQL over the PostgreSQL protocol");
    eprintln!("korvid sql: PostgreSQL protocol on {bound} ({auth}); Ctrl-C stops");
    let handlers =
        korvid_lake::pg::PgHandlers::new(engine, password.as_deref(), certificate.as_deref())
            .context("sql.tls.cert_file: channel binding")?;
    korvid_lake::pg::serve(listener, handlers, tls, shutdown).await;
    Ok(())
}

/// Every cell as display text (`None` for NULL), column by column.
fn cells(output: &QueryOutput) -> Result<Vec<Vec<Option<String>>>, arrow::error::ArrowError> {
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for batch in &output.batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| (!c.is_null(i)).then(|| f.value(i).to_string()))
                    .collect(),
            );
        }
    }
    Ok(rows)
}

fn names(schema: &Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

/// psql-style aligned output with a row count.
fn table(output: &QueryOutput) -> Result<String, arrow::error::ArrowError> {
    let header = names(&output.schema);
    let rows = cells(output)?;
    // Line breaks would break the alignment; show them escaped.
    let show = |c: &Option<String>| c.as_deref().unwrap_or("").replace('\n', "\\n");
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(show(c).chars().count());
        }
    }
    let line = |values: Vec<String>| -> String {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        format!("{}\n", padded.join(" | ").trim_end())
    };
    let mut out = line(header);
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row.iter().map(show).collect()));
    }
    let n = rows.len();
    out.push_str(&format!("({n} row{})\n", if n == 1 { "" } else { "s" }));
    Ok(out)
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// RFC 4180 CSV; NULL is an empty field.
fn csv(output: &QueryOutput) -> Result<String, arrow::error::ArrowError> {
    let mut out = names(&output.schema)
        .iter()
        .map(|n| csv_field(n))
        .collect::<Vec<_>>()
        .join(",");
    out.push_str("\r\n");
    for row in cells(output)? {
        let fields: Vec<String> = row
            .iter()
            .map(|c| c.as_deref().map(csv_field).unwrap_or_default())
            .collect();
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    Ok(out)
}

/// One JSON object per row; numbers and booleans as JSON numbers and booleans, NULL as null,
/// everything else (times, lists) as its text.
fn json_lines(output: &QueryOutput) -> Result<String, arrow::error::ArrowError> {
    let header = names(&output.schema);
    let types: Vec<&DataType> = output
        .schema
        .fields()
        .iter()
        .map(|f| f.data_type())
        .collect();
    let mut out = String::new();
    for row in cells(output)? {
        let mut obj = serde_json::Map::new();
        for ((name, ty), cell) in header.iter().zip(&types).zip(row) {
            let value = match cell {
                None => serde_json::Value::Null,
                Some(text) => json_value(ty, text),
            };
            obj.insert(name.clone(), value);
        }
        out.push_str(&serde_json::Value::Object(obj).to_string());
        out.push('\n');
    }
    Ok(out)
}

fn json_value(ty: &DataType, text: String) -> serde_json::Value {
    let typed = if ty.is_integer() {
        text.parse::<i64>().ok().map(serde_json::Value::from)
    } else if ty.is_floating() {
        text.parse::<f64>()
            .ok()
            .and_then(|f| serde_json::Number::from_f64(f).map(serde_json::Value::Number))
    } else if *ty == DataType::Boolean {
        text.parse::<bool>().ok().map(serde_json::Value::Bool)
    } else {
        None
    };
    typed.unwrap_or(serde_json::Value::String(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;

    fn output() -> QueryOutput {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "tactic",
                Arc::new(StringArray::from(vec![Some("execution"), None])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![Some(12), Some(3)])) as ArrayRef,
            ),
        ])
        .expect("batch");
        QueryOutput {
            schema: batch.schema(),
            batches: vec![batch],
        }
    }

    #[test]
    fn formats() {
        let o = output();
        assert_eq!(
            table(&o).expect("table"),
            "tactic    | n\n----------+---\nexecution | 12\n          | 3\n(2 rows)\n"
        );
        assert_eq!(csv(&o).expect("csv"), "tactic,n\r\nexecution,12\r\n,3\r\n");
        assert_eq!(
            json_lines(&o).expect("json"),
            "{\"n\":12,\"tactic\":\"execution\"}\n{\"n\":3,\"tactic\":null}\n"
        );
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
