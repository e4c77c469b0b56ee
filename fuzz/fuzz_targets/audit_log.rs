//! Audit log files (`[[ingest.audit_log]]`): any stream of JSON documents, one Event per line,
//! EventLists, arrays, and EKS/GKE/AKS exports, read in chunks as the tail reads them. Checks
//! that the splitter finds the same pieces whatever the chunking, then parses each document
//! with `audit::parse_value(doc, true, ..)` and sanitises garbage as the tail does.
#![no_main]

use korvid_fuzz::{CLUSTER, check_audit_event, check_rejected_audit, sanitizer};
use korvid_ingest::audit::parse_value;
use korvid_ingest::audit_log::{DocumentSplitter, Piece};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// A piece without its error text (which names a line and column).
#[derive(Debug, PartialEq)]
enum Seen {
    Document(Value),
    Garbage(Vec<u8>),
}

fn split(data: &[u8], chunk: usize) -> (Vec<Piece>, u64) {
    let mut splitter = DocumentSplitter::default();
    let (mut pieces, mut done, mut fed) = (Vec::new(), 0u64, 0u64);
    for bytes in data.chunks(chunk) {
        fed += bytes.len() as u64;
        let (p, next) = splitter.push(bytes, done);
        assert!(
            done <= next && next <= fed,
            "offset went from {done} to {next} after {fed} bytes"
        );
        pieces.extend(p);
        done = next;
    }
    (pieces, done)
}

fn seen(pieces: &[Piece]) -> Vec<Seen> {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Document(v) => Seen::Document(v.clone()),
            Piece::Garbage(bytes, _) => Seen::Garbage(bytes.clone()),
        })
        .collect()
}

/// A top-level number, `true`, `false` or `null` ends where the bytes end, so a chunk boundary
/// inside one legitimately splits it; those streams are not compared.
fn has_bare_scalar(pieces: &[Piece]) -> bool {
    pieces.iter().any(|p| {
        matches!(
            p,
            Piece::Document(Value::Number(_) | Value::Bool(_) | Value::Null)
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (whole, whole_done) = split(data, data.len().max(1));
    let (chunked, chunked_done) = split(data, 1 + data.len() % 61);
    if !has_bare_scalar(&whole) && !has_bare_scalar(&chunked) {
        assert_eq!(
            seen(&whole),
            seen(&chunked),
            "chunking changed the documents"
        );
        assert_eq!(whole_done, chunked_done, "chunking changed the offset");
    }
    let s = sanitizer();
    for piece in whole {
        match piece {
            Piece::Document(doc) => match parse_value(doc, true, CLUSTER, s) {
                Ok(batch) => {
                    batch.events.iter().for_each(check_audit_event);
                    for (err, raw) in &batch.rejected {
                        let _ = (err.kind(), err.to_string());
                        check_rejected_audit(raw);
                    }
                }
                Err(e) => {
                    let _ = (e.kind(), e.to_string());
                }
            },
            Piece::Garbage(bytes, _) => {
                let clean = s.sanitize_rejected_body(&bytes);
                if let Ok(v) = serde_json::from_slice(&clean) {
                    korvid_fuzz::assert_no_secret_values(&v, "garbage line");
                }
            }
        }
    }
});
