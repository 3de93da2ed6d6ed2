//! Signed checkpoints of the audit log's head: (log_id, seq, hash, ts) signed with the
//! instance's ed25519 key and written to a second file, so that cutting records off the end
//! of the log (which leaves a valid chain) is detected up to the last checkpoint. The key is a
//! 32-byte seed in hex in a 0600 file (made on first use); its public half, in hex, is what
//! `pgwarden audit verify --public-key` is given.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chain::canonical;

/// Prefixed to the signed bytes, so a checkpoint signature is good for nothing else.
pub const CHECKPOINT_DOMAIN: &[u8] = b"pgwarden.audit.checkpoint.v1\n";

/// One line of the checkpoints file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub log_id: String,
    pub seq: u64,
    /// The `hash` of record `seq`.
    pub hash: String,
    pub ts: String,
    /// The signing key's public half (hex), for telling keys apart; never trusted by itself.
    pub key: String,
    /// ed25519 over [`CHECKPOINT_DOMAIN`] and the canonical `{hash, log_id, seq, ts}` (hex).
    pub signature: String,
}

fn signed_bytes(log_id: &str, seq: u64, hash: &str, ts: &str) -> Vec<u8> {
    let v = serde_json::json!({"log_id": log_id, "seq": seq, "hash": hash, "ts": ts});
    let mut s = String::new();
    canonical(&v, &mut s);
    let mut b = CHECKPOINT_DOMAIN.to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

impl Checkpoint {
    pub fn sign(key: &SigningKey, log_id: &str, seq: u64, hash: &str, ts: &str) -> Checkpoint {
        let sig = key.sign(&signed_bytes(log_id, seq, hash, ts));
        Checkpoint {
            log_id: log_id.to_owned(),
            seq,
            hash: hash.to_owned(),
            ts: ts.to_owned(),
            key: hex::encode(key.verifying_key().as_bytes()),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// Whether `key` made this checkpoint's signature.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        key.verify(
            &signed_bytes(&self.log_id, self.seq, &self.hash, &self.ts),
            &sig,
        )
        .is_ok()
    }

    /// The line as written (canonical JSON, no newline).
    pub fn line(&self) -> String {
        let mut v = serde_json::to_value(self).expect("checkpoint serializes");
        v["type"] = Value::String("checkpoint".into());
        let mut s = String::new();
        canonical(&v, &mut s);
        s
    }
}

/// Loads the signing key at `path`, making one (0600) if the file does not exist.
pub fn load_or_create_key(path: &Path) -> std::io::Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_signing_key(&text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: not an ed25519 signing key (64 hex digits)",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::getrandom(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
            let key = SigningKey::from_bytes(&seed);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            write_private(path, &format!("{}\n", hex::encode(seed)))?;
            let public = path.with_extension("pub");
            std::fs::write(
                &public,
                format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
            )?;
            tracing::info!(key = %path.display(), public = %public.display(), "audit signing key created");
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

pub fn parse_signing_key(text: &str) -> Option<SigningKey> {
    let bytes: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
    Some(SigningKey::from_bytes(&bytes))
}

/// A public key given as 64 hex digits, or the path of a file holding them.
pub fn parse_public_key(arg: &str) -> Result<VerifyingKey, String> {
    let text = if Path::new(arg).is_file() {
        std::fs::read_to_string(arg).map_err(|e| format!("{arg}: {e}"))?
    } else {
        arg.to_owned()
    };
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            format!("{arg}: not an ed25519 public key (64 hex digits, or a file of them)")
        })?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("{arg}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_with_its_key_only_and_not_after_a_change() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let c = Checkpoint::sign(&key, "log", 42, "ab", "2026-12-03T00:00:00Z");
        assert!(c.verify(&key.verifying_key()));
        assert!(!c.verify(&other.verifying_key()));
        let mut moved = c.clone();
        moved.seq = 41;
        assert!(!moved.verify(&key.verifying_key()));
        let parsed: Checkpoint = serde_json::from_str(&c.line()).unwrap();
        assert_eq!(parsed, c);
    }

    #[test]
    fn keys_are_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        let vk = parse_public_key(public.trim()).unwrap();
        assert_eq!(vk, a.verifying_key());
        let from_file = parse_public_key(path.with_extension("pub").to_str().unwrap()).unwrap();
        assert_eq!(from_file, vk);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
