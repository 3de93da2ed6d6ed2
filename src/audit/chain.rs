//! The hash chain of the audit log, pure: the canonical form of a record (JSON, keys sorted
//! at every level, no spaces, the `hash` field left out), its domain-separated SHA-256, and the
//! genesis value the first record's `prev_hash` carries. A record's `hash` covers its
//! `prev_hash`, so editing, removing or reordering any record breaks every link after it.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Prefixed to every record before hashing, so no other SHA-256 use can collide with it.
pub const RECORD_DOMAIN: &[u8] = b"pgwarden.audit.record.v1\n";
/// The `prev_hash` of a log's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Writes `v` as canonical JSON: object keys sorted (by bytes), compact, serde_json's own
/// escaping of strings and numbers (integers only in records: no float formatting question).
pub fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => canonical_object(m, None, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// An object as canonical JSON, leaving out the key `skip`.
fn canonical_object(m: &Map<String, Value>, skip: Option<&str>, out: &mut String) {
    let mut keys: Vec<&String> = m.keys().filter(|k| Some(k.as_str()) != skip).collect();
    keys.sort();
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k.as_str()).expect("a string serializes"));
        out.push(':');
        canonical(&m[k], out);
    }
    out.push('}');
}

/// The hash of a record: SHA-256 over the domain and the canonical record without `hash`.
pub fn record_hash(record: &Map<String, Value>) -> String {
    let mut text = String::with_capacity(512);
    canonical_object(record, Some("hash"), &mut text);
    let mut h = Sha256::new();
    h.update(RECORD_DOMAIN);
    h.update(text.as_bytes());
    hex::encode(h.finalize())
}

/// Seals `record` (which carries `prev_hash` and everything else already): adds its `hash`
/// and returns the line as written, canonical, without the newline.
pub fn seal(mut record: Map<String, Value>) -> (String, String) {
    let hash = record_hash(&record);
    record.insert("hash".into(), Value::String(hash.clone()));
    let mut line = String::with_capacity(512);
    canonical(&Value::Object(record), &mut line);
    (line, hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [true, null, "x\"y"], "c": -2}});
        let mut s = String::new();
        canonical(&v, &mut s);
        assert_eq!(s, r#"{"a":{"c":-2,"d":[true,null,"x\"y"]},"b":1}"#);
    }

    #[test]
    fn the_hash_ignores_key_order_and_the_hash_field_but_nothing_else() {
        let a = json!({"seq": 1, "prev_hash": GENESIS, "type": "x"});
        let b = json!({"type": "x", "hash": "whatever", "seq": 1, "prev_hash": GENESIS});
        let c = json!({"type": "y", "seq": 1, "prev_hash": GENESIS});
        let h = |v: Value| record_hash(v.as_object().unwrap());
        assert_eq!(h(a.clone()), h(b));
        assert_ne!(h(a), h(c));
    }

    #[test]
    fn a_sealed_line_verifies() {
        let rec = json!({"seq": 7, "prev_hash": GENESIS, "text": "é \u{1}"});
        let (line, hash) = seal(rec.as_object().unwrap().clone());
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["hash"], hash.as_str());
        assert_eq!(record_hash(parsed.as_object().unwrap()), hash);
        // Re-canonicalising the parsed line gives the same bytes.
        let mut again = String::new();
        canonical(&parsed, &mut again);
        assert_eq!(again, line);
    }
}
