//! Avro encoding of korvid records on the wire.
//!
//! Two framings, chosen by configuration:
//! - **single-object** (Avro spec): `C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint of
//!   the writer schema, then the datum. Self-describing without any registry.
//! - **Confluent**: `00`, a 4-byte big-endian Schema Registry id, then the datum.
//!
//! Decoding looks at the first byte, so a consumer reads both. Writer schemas other than the
//! current one (older releases, or an id fetched from a registry) are resolved to the current
//! reader schema with Avro's schema-resolution rules.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{AvroSchema, Schema};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::records::{
    Alert, AuditEvent, DeadLetter, DedupState, Finding, GraphWindow, ImageScan, KubeEvent,
    ObjectChange,
};

/// First two bytes of an Avro single-object encoded value.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// First byte of a Confluent-framed value.
pub const CONFLUENT_MAGIC: u8 = 0x00;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The record does not fit its own schema (a bug in the producer).
    #[error("cannot encode {record}: {reason}")]
    Encode {
        /// Record name.
        record: &'static str,
        /// What Avro said.
        reason: String,
    },
    /// The bytes are not a valid datum of the writer schema.
    #[error("cannot decode {record}: {reason}")]
    Decode {
        /// Record name.
        record: &'static str,
        /// What Avro said.
        reason: String,
    },
    /// The value is empty or shorter than its header.
    #[error("value too short for its framing ({len} bytes)")]
    Truncated {
        /// Length seen.
        len: usize,
    },
    /// The first byte is neither single-object nor Confluent framing.
    #[error(
        "unknown framing: first byte 0x{0:02x} is neither Avro single-object (0xc3 0x01) nor Confluent (0x00)"
    )]
    UnknownFraming(u8),
    /// A single-object value whose writer schema this build does not know.
    #[error("unknown writer schema fingerprint {fingerprint:016x} for {record}")]
    UnknownFingerprint {
        /// Record name.
        record: &'static str,
        /// The fingerprint read.
        fingerprint: u64,
    },
    /// A Confluent value whose schema id has not been fetched yet.
    #[error("schema id {0} is not known yet; fetch it from the Schema Registry")]
    UnknownSchemaId(u32),
    /// A writer schema that cannot be resolved to the reader schema.
    #[error("writer schema for {record} is incompatible: {reason}")]
    Incompatible {
        /// Record name.
        record: &'static str,
        /// What Avro said.
        reason: String,
    },
}

impl CodecError {
    /// A stable, low-cardinality name for metrics and dead letters.
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::Encode { .. } => "encode",
            CodecError::Decode { .. } => "decode",
            CodecError::Truncated { .. } => "truncated",
            CodecError::UnknownFraming(_) => "unknown_framing",
            CodecError::UnknownFingerprint { .. } => "unknown_fingerprint",
            CodecError::UnknownSchemaId(_) => "unknown_schema_id",
            CodecError::Incompatible { .. } => "incompatible_schema",
        }
    }
}

/// How values are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Avro single-object encoding (no registry).
    SingleObject,
    /// Confluent wire format with the id the registry gave this schema.
    Confluent {
        /// Schema Registry id.
        schema_id: u32,
    },
}

/// Parsed schema plus a ready writer and reader, built once per record type.
pub struct CompiledSchema {
    schema: &'static Schema,
    fingerprint: u64,
    writer: GenericDatumWriter<'static>,
    reader: GenericDatumReader<'static>,
}

impl CompiledSchema {
    fn compile(avsc: &'static str, name: &'static str) -> Self {
        // The .avsc files are compiled in and checked by tests, so a parse failure is a build defect.
        let parsed = Schema::parse_str(avsc)
            .unwrap_or_else(|e| panic!("embedded schema {name} does not parse: {e}"));
        let schema: &'static Schema = Box::leak(Box::new(parsed));
        let writer = GenericDatumWriter::builder(schema)
            .human_readable(false)
            .build()
            .unwrap_or_else(|e| panic!("embedded schema {name} does not resolve: {e}"));
        let reader = GenericDatumReader::builder(schema)
            .human_readable(false)
            .build()
            .unwrap_or_else(|e| panic!("embedded schema {name} does not resolve: {e}"));
        CompiledSchema {
            schema,
            fingerprint: rabin_fingerprint(schema),
            writer,
            reader,
        }
    }

    /// The parsed schema.
    pub fn schema(&self) -> &'static Schema {
        self.schema
    }

    /// CRC-64-AVRO fingerprint of the canonical form.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// CRC-64-AVRO (Rabin) fingerprint of a schema's parsing canonical form.
pub fn rabin_fingerprint(schema: &Schema) -> u64 {
    let fp = schema.fingerprint::<apache_avro::rabin::Rabin>();
    let mut le = [0u8; 8];
    le.copy_from_slice(&fp.bytes[..8]);
    u64::from_le_bytes(le)
}

/// A record type korvid writes to Kafka.
pub trait Record: Serialize + DeserializeOwned + AvroSchema + Send + Sync + 'static {
    /// Record name, e.g. `Finding`.
    const NAME: &'static str;
    /// The `.avsc` source of truth.
    const AVSC: &'static str;

    /// The compiled schema, built on first use.
    fn compiled() -> &'static CompiledSchema;
    /// Cluster the record belongs to, when it has one.
    fn cluster(&self) -> Option<&str>;
    /// Event time (unit as the schema documents).
    fn event_time(&self) -> i64;
}

macro_rules! record {
    ($ty:ty, $file:literal, |$r:ident| $cluster:expr) => {
        impl Record for $ty {
            const NAME: &'static str = stringify!($ty);
            const AVSC: &'static str = include_str!(concat!("../avro/", $file));

            fn compiled() -> &'static CompiledSchema {
                static COMPILED: OnceLock<CompiledSchema> = OnceLock::new();
                COMPILED.get_or_init(|| CompiledSchema::compile(Self::AVSC, Self::NAME))
            }

            fn cluster(&self) -> Option<&str> {
                let $r = self;
                $cluster
            }

            fn event_time(&self) -> i64 {
                self.event_time
            }
        }
    };
}

record!(ObjectChange, "object_change.avsc", |r| Some(&r.cluster));
record!(AuditEvent, "audit_event.avsc", |r| Some(&r.cluster));
record!(KubeEvent, "kube_event.avsc", |r| Some(&r.cluster));
record!(ImageScan, "image_scan.avsc", |r| Some(&r.cluster));
record!(GraphWindow, "graph_window.avsc", |r| Some(&r.cluster));
record!(Finding, "finding.avsc", |r| Some(&r.cluster));
record!(Alert, "alert.avsc", |r| Some(&r.cluster));
record!(DeadLetter, "dead_letter.avsc", |r| r.cluster.as_deref());
record!(DedupState, "dedup_state.avsc", |r| Some(&r.cluster));

/// Encodes a record with the given framing.
pub fn encode<R: Record>(record: &R, framing: Framing) -> Result<Vec<u8>, CodecError> {
    let compiled = R::compiled();
    let mut out = Vec::with_capacity(256);
    match framing {
        Framing::SingleObject => {
            out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
            out.extend_from_slice(&compiled.fingerprint.to_le_bytes());
        }
        Framing::Confluent { schema_id } => {
            out.push(CONFLUENT_MAGIC);
            out.extend_from_slice(&schema_id.to_be_bytes());
        }
    }
    compiled
        .writer
        .write_ser(&mut out, record)
        .map_err(|e| CodecError::Encode {
            record: R::NAME,
            reason: e.to_string(),
        })?;
    Ok(out)
}

/// Decodes values of one record type, whatever schema version or framing wrote them.
pub struct Decoder<R: Record> {
    /// Writer schemas other than the current one, by single-object fingerprint.
    by_fingerprint: HashMap<u64, Schema>,
    /// Writer schemas by registry id (`None` value: the id names the current schema).
    by_id: HashMap<u32, Option<Schema>>,
    _record: std::marker::PhantomData<fn() -> R>,
}

impl<R: Record> Default for Decoder<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: Record> Decoder<R> {
    /// A decoder that knows the current schema and every released one under `schemas/avro/released/`.
    pub fn new() -> Self {
        let mut by_fingerprint = HashMap::new();
        for avsc in crate::released::released_versions(R::NAME) {
            if let Ok(schema) = Schema::parse_str(avsc) {
                let fp = rabin_fingerprint(&schema);
                if fp != R::compiled().fingerprint {
                    by_fingerprint.insert(fp, schema);
                }
            }
        }
        Decoder {
            by_fingerprint,
            by_id: HashMap::new(),
            _record: std::marker::PhantomData,
        }
    }

    /// Teaches the decoder the writer schema behind a registry id.
    pub fn add_schema_id(&mut self, id: u32, schema: Schema) {
        let same = rabin_fingerprint(&schema) == R::compiled().fingerprint;
        self.by_id
            .insert(id, if same { None } else { Some(schema) });
    }

    /// Whether the decoder knows a registry id.
    pub fn knows_schema_id(&self, id: u32) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Decodes one framed value.
    pub fn decode(&self, bytes: &[u8]) -> Result<R, CodecError> {
        let first = *bytes.first().ok_or(CodecError::Truncated { len: 0 })?;
        match first {
            0xC3 => {
                if bytes.len() < 10 || bytes[1] != 0x01 {
                    return Err(CodecError::Truncated { len: bytes.len() });
                }
                let mut fp = [0u8; 8];
                fp.copy_from_slice(&bytes[2..10]);
                let fingerprint = u64::from_le_bytes(fp);
                let body = &bytes[10..];
                if fingerprint == R::compiled().fingerprint {
                    decode_current::<R>(body)
                } else if let Some(writer) = self.by_fingerprint.get(&fingerprint) {
                    decode_resolved::<R>(writer, body)
                } else {
                    Err(CodecError::UnknownFingerprint {
                        record: R::NAME,
                        fingerprint,
                    })
                }
            }
            CONFLUENT_MAGIC => {
                if bytes.len() < 5 {
                    return Err(CodecError::Truncated { len: bytes.len() });
                }
                let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                match self.by_id.get(&id) {
                    Some(None) => decode_current::<R>(&bytes[5..]),
                    Some(Some(writer)) => decode_resolved::<R>(writer, &bytes[5..]),
                    None => Err(CodecError::UnknownSchemaId(id)),
                }
            }
            other => Err(CodecError::UnknownFraming(other)),
        }
    }
}

/// Reads a registry id from a Confluent-framed value without decoding it.
pub fn confluent_schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [CONFLUENT_MAGIC, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

fn decode_current<R: Record>(mut body: &[u8]) -> Result<R, CodecError> {
    let value = R::compiled()
        .reader
        .read_deser::<R>(&mut body)
        .map_err(|e| CodecError::Decode {
            record: R::NAME,
            reason: e.to_string(),
        })?;
    if !body.is_empty() {
        return Err(CodecError::Decode {
            record: R::NAME,
            reason: format!("{} trailing bytes after the datum", body.len()),
        });
    }
    Ok(value)
}

fn decode_resolved<R: Record>(writer: &Schema, mut body: &[u8]) -> Result<R, CodecError> {
    let reader = GenericDatumReader::builder(writer)
        .reader_schema(R::compiled().schema)
        .human_readable(false)
        .build()
        .map_err(|e| CodecError::Incompatible {
            record: R::NAME,
            reason: e.to_string(),
        })?;
    let value = reader
        .read_value(&mut body)
        .map_err(|e| CodecError::Decode {
            record: R::NAME,
            reason: e.to_string(),
        })?;
    apache_avro::from_value::<R>(&value).map_err(|e| CodecError::Incompatible {
        record: R::NAME,
        reason: e.to_string(),
    })
}
