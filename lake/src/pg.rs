//! `korvid sql --serve`: the lake's SQL over the PostgreSQL wire protocol (pgwire), so psql,
//! Grafana and BI tools connect as to a PostgreSQL server.
//!
//! Simple and extended query protocols; Arrow types map to `bool`, `int2/4/8`, `float4/8`,
//! `text`, `bytea`, `date`, `timestamp` and `timestamptz`, anything else (lists, decimals) is
//! sent as its text form. Session statements drivers send on connect (`SET`, `BEGIN`,
//! `COMMIT`, `ROLLBACK`, `DISCARD`) are acknowledged and ignored: the lake is read-only and one
//! session serves every connection. Optional TLS (`sql.tls`; clients that do not ask for it are
//! refused once it is configured) and an optional password, checked with SCRAM-SHA-256 so the
//! password itself never crosses the connection; the server keeps only its salted form.

use std::fmt::Debug;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema, TimeUnit};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlan;
use futures::sink::Sink;
use futures::stream;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password, random_nonce};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;

use crate::query::{LakeSql, QueryOutput, SqlError};

/// Connections served at once; more wait for a free slot.
const MAX_CONNECTIONS: usize = 64;

/// The PostgreSQL type a column of `dt` is sent as.
pub fn pg_type(dt: &DataType) -> Type {
    match dt {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Dictionary(_, value) => pg_type(value),
        _ => Type::TEXT,
    }
}

/// A result column converted to the Arrow type its PostgreSQL type is encoded from.
enum PgColumn {
    Bool(BooleanArray),
    Int2(Int16Array),
    Int4(Int32Array),
    Int8(Int64Array),
    Float4(Float32Array),
    Float8(Float64Array),
    Text(StringArray),
    Bytea(BinaryArray),
    Date(Date32Array),
    Timestamp(TimestampMicrosecondArray),
    TimestampTz(TimestampMicrosecondArray),
}

fn to_column(array: &ArrayRef) -> Result<PgColumn, ArrowError> {
    let ty = pg_type(array.data_type());
    let to = |dt: DataType| cast(array, &dt);
    Ok(match ty {
        Type::BOOL => PgColumn::Bool(to(DataType::Boolean)?.as_boolean().clone()),
        Type::INT2 => PgColumn::Int2(to(DataType::Int16)?.as_primitive().clone()),
        Type::INT4 => PgColumn::Int4(to(DataType::Int32)?.as_primitive().clone()),
        // UInt64 beyond i64::MAX fails the cast rather than wrapping.
        Type::INT8 => PgColumn::Int8(to(DataType::Int64)?.as_primitive().clone()),
        Type::FLOAT4 => PgColumn::Float4(to(DataType::Float32)?.as_primitive().clone()),
        Type::FLOAT8 => PgColumn::Float8(to(DataType::Float64)?.as_primitive().clone()),
        Type::BYTEA => PgColumn::Bytea(to(DataType::Binary)?.as_binary().clone()),
        Type::DATE => PgColumn::Date(to(DataType::Date32)?.as_primitive().clone()),
        Type::TIMESTAMP => PgColumn::Timestamp(
            to(DataType::Timestamp(TimeUnit::Microsecond, None))?
                .as_primitive()
                .clone(),
        ),
        Type::TIMESTAMPTZ => PgColumn::TimestampTz(
            to(DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into()),
            ))?
            .as_primitive()
            .clone(),
        ),
        _ => PgColumn::Text(text_column(array)?),
    })
}

/// Any column as text: strings as they are, everything else in Arrow's display form.
fn text_column(array: &ArrayRef) -> Result<StringArray, ArrowError> {
    if matches!(
        array.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..)
    ) && let Ok(s) = cast(array, &DataType::Utf8)
    {
        return Ok(s.as_string::<i32>().clone());
    }
    let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
    let mut out = StringBuilder::with_capacity(array.len(), array.len() * 16);
    for i in 0..array.len() {
        if array.is_null(i) {
            out.append_null();
        } else {
            out.append_value(formatter.value(i).to_string());
        }
    }
    Ok(out.finish())
}

fn opt<'a, A: Array, T>(a: &'a A, i: usize, value: impl FnOnce(&'a A) -> T) -> Option<T> {
    (!a.is_null(i)).then(|| value(a))
}

fn encode_value(enc: &mut DataRowEncoder, col: &PgColumn, i: usize) -> PgWireResult<()> {
    match col {
        PgColumn::Bool(a) => enc.encode_field(&opt(a, i, |a| a.value(i))),
        PgColumn::Int2(a) => enc.encode_field(&opt(a, i, |a| a.value(i))),
        PgColumn::Int4(a) => enc.encode_field(&opt(a, i, |a| a.value(i))),
        PgColumn::Int8(a) => enc.encode_field(&opt(a, i, |a| a.value(i))),
        PgColumn::Float4(a) => enc.encode_field(&opt(a, i, |a| a.value(i))),
        PgColumn::Float8(a) => enc.encode_field(&opt(a, i, |a| a.value(i))),
        PgColumn::Text(a) => enc.encode_field(&opt(a, i, |a| a.value(i))),
        PgColumn::Bytea(a) => enc.encode_field(&opt(a, i, |a| a.value(i))),
        PgColumn::Date(a) => enc.encode_field(&opt(a, i, |a| a.value_as_date(i)).flatten()),
        PgColumn::Timestamp(a) => {
            enc.encode_field(&opt(a, i, |a| a.value_as_datetime(i)).flatten())
        }
        PgColumn::TimestampTz(a) => enc.encode_field(
            &opt(a, i, |a| {
                chrono::DateTime::<chrono::Utc>::from_timestamp_micros(a.value(i))
            })
            .flatten(),
        ),
    }
}

/// Column descriptions for `schema`, each in the format the client asked for.
pub fn field_infos(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f.data_type()),
                format.format_for(i),
            )
        })
        .collect()
}

/// Encodes every row of `batches` as PostgreSQL data rows described by `fields`.
pub fn encode_rows(
    batches: &[RecordBatch],
    fields: Arc<Vec<FieldInfo>>,
) -> PgWireResult<Vec<DataRow>> {
    let mut rows = Vec::new();
    let mut enc = DataRowEncoder::new(fields);
    for batch in batches {
        let columns = batch
            .columns()
            .iter()
            .map(to_column)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        for i in 0..batch.num_rows() {
            for col in &columns {
                encode_value(&mut enc, col, i)?;
            }
            rows.push(enc.take_row());
        }
    }
    Ok(rows)
}

fn query_response(output: &QueryOutput, format: &Format) -> PgWireResult<Response> {
    let fields = Arc::new(field_infos(&output.schema, format));
    let rows = encode_rows(&output.batches, fields.clone())?;
    Ok(Response::Query(QueryResponse::new(
        fields,
        stream::iter(rows.into_iter().map(Ok)),
    )))
}

fn pg_error(e: &SqlError) -> PgWireError {
    let code = match e {
        SqlError::Invalid(_) => "42601", // syntax_error (also planning errors)
        SqlError::Execution(_) => "58000", // system_error
        SqlError::Timeout(_) => "57014", // query_canceled
    };
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        e.to_string(),
    )))
}

/// The command tag for a session statement that is acknowledged without running, or `None`
/// for a query.
fn session_statement(sql: &str) -> Option<&'static str> {
    let first = sql
        .trim_start()
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    match first.as_str() {
        "SET" | "RESET" => Some("SET"),
        "BEGIN" | "START" => Some("BEGIN"),
        "COMMIT" | "END" => Some("COMMIT"),
        "ROLLBACK" | "ABORT" => Some("ROLLBACK"),
        "DISCARD" => Some("DISCARD ALL"),
        "DEALLOCATE" => Some("DEALLOCATE"),
        _ => None,
    }
}

/// A statement of the extended protocol: the SQL and, for queries, its plan.
#[derive(Debug, Clone)]
pub struct LakeStatement {
    sql: String,
    plan: Option<LogicalPlan>,
}

/// Plans statements for the extended protocol.
#[derive(Debug)]
pub struct LakeQueryParser {
    engine: LakeSql,
}

#[async_trait]
impl QueryParser for LakeQueryParser {
    type Statement = Arc<LakeStatement>;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let plan = match session_statement(sql) {
            Some(_) => None,
            None => Some(self.engine.plan(sql).await.map_err(|e| pg_error(&e))?),
        };
        Ok(Some(Arc::new(LakeStatement {
            sql: sql.to_string(),
            plan,
        })))
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        Ok(parameter_types(stmt)
            .into_iter()
            .map(|dt| dt.as_ref().map(pg_type).unwrap_or(Type::UNKNOWN))
            .collect())
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &stmt.plan {
            Some(plan) => field_infos(
                plan.schema().as_arrow(),
                column_format.unwrap_or(&Format::UnifiedText),
            ),
            None => Vec::new(),
        })
    }
}

/// `$1`, `$2`, ... types as DataFusion inferred them, in order.
fn parameter_types(stmt: &LakeStatement) -> Vec<Option<DataType>> {
    let Some(plan) = &stmt.plan else {
        return Vec::new();
    };
    let Ok(types) = plan.get_parameter_types() else {
        return Vec::new();
    };
    let mut numbered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(name, dt)| Some((name.strip_prefix('$')?.parse().ok()?, dt)))
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    numbered.into_iter().map(|(_, dt)| dt).collect()
}

/// A bound parameter as a DataFusion value of the type the query expects.
fn parameter_value(
    portal: &Portal<Arc<LakeStatement>>,
    idx: usize,
    client_type: Option<&Type>,
    expected: Option<&DataType>,
) -> PgWireResult<ScalarValue> {
    let ty = client_type
        .filter(|t| **t != Type::UNKNOWN)
        .cloned()
        .or_else(|| expected.map(pg_type))
        .unwrap_or(Type::TEXT);
    let value = match ty {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(idx, &ty)?),
        Type::INT2 => ScalarValue::Int16(portal.parameter::<i16>(idx, &ty)?),
        Type::INT4 => ScalarValue::Int32(portal.parameter::<i32>(idx, &ty)?),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(idx, &ty)?),
        Type::FLOAT4 => ScalarValue::Float32(portal.parameter::<f32>(idx, &ty)?),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(idx, &ty)?),
        _ => ScalarValue::Utf8(portal.parameter::<String>(idx, &Type::TEXT)?),
    };
    match expected {
        Some(dt) if value.data_type() != *dt => value.cast_to(dt).map_err(|e| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "22P02".into(), // invalid_text_representation
                format!("parameter ${}: {e}", idx + 1),
            )))
        }),
        _ => Ok(value),
    }
}

/// Answers queries of both protocols with one shared [`LakeSql`].
#[derive(Debug)]
pub struct LakeQueryHandler {
    engine: LakeSql,
    parser: Arc<LakeQueryParser>,
}

#[async_trait]
impl SimpleQueryHandler for LakeQueryHandler {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(tag) = session_statement(query) {
            return Ok(vec![Response::Execution(Tag::new(tag))]);
        }
        let output = self.engine.query(query).await.map_err(|e| {
            tracing::debug!(error = %e, "query failed");
            pg_error(&e)
        })?;
        Ok(vec![query_response(&output, &Format::UnifiedText)?])
    }
}

#[async_trait]
impl ExtendedQueryHandler for LakeQueryHandler {
    type Statement = Arc<LakeStatement>;
    type QueryParser = LakeQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement.statement;
        let Some(plan) = &stmt.plan else {
            let tag = session_statement(&stmt.sql).unwrap_or("SET");
            return Ok(Response::Execution(Tag::new(tag)));
        };
        let expected = parameter_types(stmt);
        let mut plan = plan.clone();
        if portal.parameter_len() > 0 {
            let values = (0..portal.parameter_len())
                .map(|i| {
                    let client_type = portal
                        .statement
                        .parameter_types
                        .get(i)
                        .and_then(Option::as_ref);
                    parameter_value(
                        portal,
                        i,
                        client_type,
                        expected.get(i).and_then(Option::as_ref),
                    )
                })
                .collect::<PgWireResult<Vec<_>>>()?;
            plan = plan
                .with_param_values(values)
                .map_err(|e| pg_error(&SqlError::Invalid(format!("binding parameters: {e}"))))?;
        }
        let output = self.engine.execute(plan).await.map_err(|e| pg_error(&e))?;
        query_response(&output, &portal.result_column_format)
    }
}

/// PBKDF2 rounds of the salted password (RFC 7677's minimum, PostgreSQL's default).
const SCRAM_ITERATIONS: usize = 4096;

/// The one password, for any user name, kept only in its salted form.
struct SaltedPassword {
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl SaltedPassword {
    fn new(password: &str) -> Self {
        let salt = random_nonce().into_bytes();
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        SaltedPassword { salt, salted }
    }
}

impl Debug for SaltedPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaltedPassword(<redacted>)")
    }
}

#[async_trait]
impl AuthSource for SaltedPassword {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        Ok(Password::new(Some(self.salt.clone()), self.salted.clone()))
    }
}

/// Accepts every client without a password.
#[derive(Debug)]
struct OpenDoor;

impl NoopStartupHandler for OpenDoor {}

/// How a client gets in: a password when one is configured, else none.
enum Admission {
    Open(OpenDoor),
    Password(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
}

/// Startup: refuses unencrypted connections when TLS is configured, then admits.
struct Startup {
    require_tls: bool,
    admission: Admission,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.require_tls && !client.is_secure() {
            tracing::info!(peer = %client.socket_addr(), "sql: refused a connection without TLS");
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".to_string(),
                "28000".to_string(), // invalid_authorization_specification
                "this server accepts only TLS connections (sslmode=require or stronger)"
                    .to_string(),
            ))));
        }
        match &self.admission {
            Admission::Open(h) => h.on_startup(client, message).await,
            Admission::Password(h) => h.on_startup(client, message).await,
        }
    }
}

/// Everything a connection needs.
pub struct PgHandlers {
    query: Arc<LakeQueryHandler>,
    startup: Arc<Startup>,
}

impl PgHandlers {
    /// Handlers answering from `engine`, asking for `password` (SCRAM-SHA-256) when set.
    /// `tls_certificate` is the server certificate (PEM) when TLS is on: clients without TLS are
    /// then refused, and SCRAM also offers channel binding (SCRAM-SHA-256-PLUS), which ties the
    /// password exchange to this TLS session.
    pub fn new(
        engine: LakeSql,
        password: Option<&str>,
        tls_certificate: Option<&[u8]>,
    ) -> PgWireResult<Self> {
        let admission = match password {
            Some(p) => {
                let mut scram = ScramAuth::new(Arc::new(SaltedPassword::new(p)));
                if let Some(pem) = tls_certificate {
                    scram.configure_certificate(pem)?;
                }
                Admission::Password(Box::new(
                    SASLAuthStartupHandler::new(
                        Arc::new(DefaultServerParameterProvider::default()),
                    )
                    .with_scram(scram),
                ))
            }
            None => Admission::Open(OpenDoor),
        };
        let startup = Startup {
            require_tls: tls_certificate.is_some(),
            admission,
        };
        Ok(PgHandlers {
            query: Arc::new(LakeQueryHandler {
                parser: Arc::new(LakeQueryParser {
                    engine: engine.clone(),
                }),
                engine,
            }),
            startup: Arc::new(startup),
        })
    }
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.query.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.query.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Serves connections from `listener` until `shutdown`, offering TLS when `tls` is set (build
/// the handlers with its certificate to refuse clients that do not take it).
pub async fn serve(
    listener: TcpListener,
    handlers: PgHandlers,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: korvid_common::Shutdown,
) {
    let acceptor = tls.map(pgwire::tokio::TlsAcceptor::from);
    let handlers = Arc::new(handlers);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.triggered() => break,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "sql: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let handlers = handlers.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tracing::debug!(%peer, "sql: connection");
            if let Err(e) = pgwire::tokio::process_socket(socket, acceptor, handlers).await {
                tracing::debug!(%peer, error = %e, "sql: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ListBuilder, TimestampMillisecondArray};

    #[test]
    fn arrow_types_map_to_postgres_types() {
        assert_eq!(pg_type(&DataType::Int64), Type::INT8);
        assert_eq!(pg_type(&DataType::Int32), Type::INT4);
        assert_eq!(pg_type(&DataType::UInt64), Type::INT8);
        assert_eq!(pg_type(&DataType::Float64), Type::FLOAT8);
        assert_eq!(pg_type(&DataType::Boolean), Type::BOOL);
        assert_eq!(pg_type(&DataType::Utf8), Type::TEXT);
        assert_eq!(pg_type(&DataType::Utf8View), Type::TEXT);
        assert_eq!(
            pg_type(&DataType::Dictionary(
                Box::new(DataType::UInt16),
                Box::new(DataType::Utf8)
            )),
            Type::TEXT
        );
        assert_eq!(
            pg_type(&DataType::Timestamp(
                TimeUnit::Millisecond,
                Some("UTC".into())
            )),
            Type::TIMESTAMPTZ
        );
        assert_eq!(
            pg_type(&DataType::Timestamp(TimeUnit::Nanosecond, None)),
            Type::TIMESTAMP
        );
        assert_eq!(
            pg_type(&DataType::new_list(DataType::Utf8, true)),
            Type::TEXT
        );
    }

    #[test]
    fn rows_encode_as_postgres_text() {
        let mut list = ListBuilder::new(StringBuilder::new());
        list.values().append_value("T1609");
        list.append(true);
        list.append(false);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "n",
                Arc::new(Int64Array::from(vec![Some(7), None])) as ArrayRef,
            ),
            (
                "t",
                Arc::new(
                    TimestampMillisecondArray::from(vec![Some(1_000), Some(0)])
                        .with_timezone("UTC"),
                ) as ArrayRef,
            ),
            ("l", Arc::new(list.finish()) as ArrayRef),
        ])
        .expect("batch");
        let fields = Arc::new(field_infos(&batch.schema(), &Format::UnifiedText));
        let rows = encode_rows(&[batch], fields).expect("encode");
        assert_eq!(rows.len(), 2);
        // Each field: 4-byte length (-1 for NULL) then the text.
        let text = |row: &DataRow| String::from_utf8_lossy(&row.data).into_owned();
        let first = text(&rows[0]);
        assert!(first.contains('7'), "{first:?}");
        assert!(first.contains("1970-01-01 00:00:01"), "{first:?}");
        assert!(first.contains("[T1609]"), "{first:?}");
        assert_eq!(rows[1].data[..4], (-1i32).to_be_bytes(), "NULL int");
    }

    #[test]
    fn session_statements_are_recognised() {
        assert_eq!(session_statement("SET extra_float_digits = 3"), Some("SET"));
        assert_eq!(session_statement("  begin;"), Some("BEGIN"));
        assert_eq!(session_statement("SELECT 1"), None);
        assert_eq!(session_statement("settings"), None);
    }

    #[test]
    fn the_password_is_kept_only_salted() {
        let a = SaltedPassword::new("lake-password");
        let b = SaltedPassword::new("lake-password");
        assert_ne!(a.salt, b.salt, "every server start draws a new salt");
        assert_ne!(a.salted, b.salted);
        assert_eq!(a.salted.len(), 32, "SHA-256 output");
        let kept = [a.salt.as_slice(), a.salted.as_slice()].concat();
        assert!(
            !kept
                .windows(b"lake-password".len())
                .any(|w| w == b"lake-password")
        );
        assert_eq!(format!("{a:?}"), "SaltedPassword(<redacted>)");
    }
}
