//! The contracts between korvid's services: Avro schemas (`avro/*.avsc`, the source of truth),
//! the Rust record types that mirror them, and their wire framings (Avro single-object and the
//! Confluent Schema Registry format). An optional Schema Registry client sits behind the
//! `registry` feature.
//!
//! This crate has no runtime dependencies beyond serialisation.

#![warn(missing_docs)]

pub mod codec;
pub mod image_ref;
pub mod records;
#[cfg(feature = "registry")]
pub mod registry;
pub mod released;
pub mod window_tables;

pub use codec::{CodecError, Decoder, Framing, Record, encode};
pub use records::*;
