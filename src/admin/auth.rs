//! Admin API authentication: the tokens file, the secrets, and the extractor that turns an
//! `Authorization: Bearer <secret>` header into a [`model::Actor`](crate::approval::model::Actor).
//!
//! The file (TOML, one `[[token]]` per holder) keeps only the SHA-256 of each secret, so
//! reading it does not let anyone call the API. `pgwarden tokens add` appends to it
//! atomically (a new file renamed over the old, mode 0600); the running server re-reads it
//! on SIGHUP ([`TokenSet::reload`]), keeping the set it has when the new file is invalid.
//! A presented secret is hashed and compared against every stored hash in constant time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::error::ApiError;
use crate::approval::model::{Actor, Role};

/// What every secret starts with, so it is recognisable in a leaked log or a secret scanner.
pub const SECRET_PREFIX: &str = "pgw_";

/// Why the tokens file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: a token named {name:?} exists already", path.display())]
    Duplicate { path: PathBuf, name: String },
    #[error("{0}")]
    BadInput(String),
    #[error("no random bytes from the operating system: {0}")]
    Random(String),
}

/// One `[[token]]` entry of the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub db_user: Option<String>,
    /// SHA-256 of the secret, lowercase hex.
    pub sha256: String,
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// What `pgwarden tokens add` is asked to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    pub groups: Vec<String>,
    pub db_user: Option<String>,
}

/// The role's name as written in the file and in messages.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Approver => "approver",
        Role::Admin => "admin",
    }
}

/// SHA-256 of `secret`, as stored in the file (hex) and compared (bytes).
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn new_secret() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn check_word(what: &str, s: &str) -> Result<(), TokenError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadInput(format!(
            "{what} {s:?}: use 1 to 128 letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

fn read_file(path: &Path) -> Result<Option<String>, TokenError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses and checks the file's text: known keys only, names unique, hashes well formed.
fn parse_entries(path: &Path, text: &str) -> Result<Vec<TokenEntry>, TokenError> {
    let invalid = |message: String| TokenError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let file: TokensFile = toml_edit::de::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let mut seen = std::collections::HashSet::new();
    for t in &file.token {
        if !seen.insert(t.name.as_str()) {
            return Err(invalid(format!("token name {:?} appears twice", t.name)));
        }
        let h = t.sha256.as_bytes();
        if h.len() != 64
            || !h
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            return Err(invalid(format!(
                "token {:?}: sha256 must be 64 lowercase hex digits",
                t.name
            )));
        }
    }
    Ok(file.token)
}

/// Creates a token in the file at `path` (creating the file if missing) and returns its
/// secret, which is stored nowhere: the caller shows it once.
pub fn add_token(path: &Path, new: &NewToken) -> Result<String, TokenError> {
    check_word("token name", &new.name)?;
    for g in &new.groups {
        check_word("group", g)?;
    }
    if let Some(u) = &new.db_user {
        if u.is_empty() {
            return Err(TokenError::BadInput("--db-user must not be empty".into()));
        }
    }
    let text = read_file(path)?.unwrap_or_default();
    let entries = parse_entries(path, &text)?;
    if entries.iter().any(|t| t.name == new.name) {
        return Err(TokenError::Duplicate {
            path: path.to_path_buf(),
            name: new.name.clone(),
        });
    }
    // Edit the document rather than re-serialising, so comments in the file stay.
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| TokenError::Invalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    let secret = new_secret()?;
    let mut t = toml_edit::Table::new();
    t["name"] = toml_edit::value(new.name.as_str());
    t["role"] = toml_edit::value(role_name(new.role));
    t["groups"] = toml_edit::value(new.groups.iter().collect::<toml_edit::Array>());
    if let Some(u) = &new.db_user {
        t["db_user"] = toml_edit::value(u.as_str());
    }
    t["sha256"] = toml_edit::value(hex::encode(hash_secret(&secret)));
    t["created_at"] = toml_edit::value(jiff::Timestamp::now().to_string());
    if !doc.contains_key("token") {
        // Comments of a file without tables are the document's trailing text, which would
        // end up after the new table: keep them in front of it.
        let lead = doc.trailing().as_str().unwrap_or("").to_owned();
        if !lead.is_empty() {
            t.decor_mut().set_prefix(lead);
            doc.set_trailing("");
        }
    }
    match doc
        .entry("token")
        .or_insert(toml_edit::Item::ArrayOfTables(Default::default()))
        .as_array_of_tables_mut()
    {
        Some(a) => a.push(t),
        None => {
            return Err(TokenError::Invalid {
                path: path.to_path_buf(),
                message: "`token` must be an array of tables ([[token]])".into(),
            })
        }
    }
    write_atomically(path, doc.to_string().as_bytes())?;
    Ok(secret)
}

/// Writes `data` to a new file beside `path` (mode 0600), syncs it, renames it over `path`
/// and syncs the directory: a reader sees the old file or the new one, never a part.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), TokenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let werr = |source| TokenError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| TokenError::BadInput(format!("{} is not a file name", path.display())))?;
    let mut nonce = [0u8; 8];
    getrandom::getrandom(&mut nonce).map_err(|e| TokenError::Random(e.to_string()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex::encode(nonce)
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

/// A token as the server holds it.
#[derive(Debug, Clone)]
struct Stored {
    actor: Actor,
    hash: [u8; 32],
}

/// The tokens the admin API accepts; cheap to share, swapped whole on reload.
#[derive(Debug)]
pub struct TokenSet {
    /// The file it was read from; `None`: no tokens file configured (every call is 401).
    path: Option<PathBuf>,
    tokens: ArcSwap<Vec<Stored>>,
}

impl TokenSet {
    /// Reads the tokens file. A missing file is an error: a configured file that is not
    /// there is a mistake, not an empty set.
    pub fn load(path: &Path) -> Result<TokenSet, TokenError> {
        let tokens = Self::read(path)?;
        Ok(TokenSet {
            path: Some(path.to_path_buf()),
            tokens: ArcSwap::from_pointee(tokens),
        })
    }

    /// No tokens: every authenticated call is refused.
    pub fn empty() -> TokenSet {
        TokenSet {
            path: None,
            tokens: ArcSwap::from_pointee(Vec::new()),
        }
    }

    fn read(path: &Path) -> Result<Vec<Stored>, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let entries = parse_entries(path, &text)?;
        Ok(entries
            .into_iter()
            .map(|t| {
                let mut hash = [0u8; 32];
                // parse_entries checked the hex.
                hex::decode_to_slice(&t.sha256, &mut hash).expect("64 hex digits");
                Stored {
                    actor: Actor {
                        name: t.name,
                        role: t.role,
                        groups: t.groups,
                        db_user: t.db_user,
                    },
                    hash,
                }
            })
            .collect())
    }

    /// Re-reads the file (SIGHUP) and swaps the new set in; on error the running set stays.
    /// Returns how many tokens are now accepted.
    pub fn reload(&self) -> Result<usize, TokenError> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let tokens = Self::read(path)?;
        let n = tokens.len();
        self.tokens.store(Arc::new(tokens));
        Ok(n)
    }

    /// The file this set is read from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn len(&self) -> usize {
        self.tokens.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The holder of `secret`, if it is one of ours. Hashes it and compares with every
    /// stored hash, without stopping at a match or branching on bytes.
    pub fn authenticate(&self, secret: &str) -> Option<Actor> {
        let presented = hash_secret(secret);
        let tokens = self.tokens.load();
        let mut hit = subtle::Choice::from(0);
        let mut index = 0u64;
        for (i, t) in tokens.iter().enumerate() {
            let eq = t.hash.ct_eq(&presented);
            index.conditional_assign(&(i as u64), eq);
            hit |= eq;
        }
        if bool::from(hit) {
            tokens.get(index as usize).map(|t| t.actor.clone())
        } else {
            None
        }
    }
}

/// Refuses with 403 unless `actor`'s role is at least `needed`; `doing` names the action.
pub fn require(actor: &Actor, needed: Role, doing: &str) -> Result<(), ApiError> {
    if actor.role >= needed {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "token {} has role {}; {doing} needs {}{}",
            actor.name,
            role_name(actor.role),
            role_name(needed),
            if needed == Role::Admin {
                ""
            } else {
                " or admin"
            }
        )))
    }
}

/// The authenticated caller of an API handler (401 when there is none).
#[derive(Debug, Clone)]
pub struct Authenticated(pub Actor);

impl FromRequestParts<super::AdminState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &super::AdminState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
        let value = header
            .to_str()
            .map_err(|_| ApiError::unauthorized("invalid token"))?;
        let (scheme, secret) = value
            .split_once(' ')
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized(
                "expected Authorization: Bearer <token>",
            ));
        }
        state
            .tokens()
            .authenticate(secret.trim())
            .map(Authenticated)
            .ok_or_else(|| ApiError::unauthorized("invalid token"))
    }
}

/// An authenticated caller whose role is approver or admin (403 otherwise). Checked as an
/// extractor so that a caller without the role learns nothing from body validation.
#[derive(Debug, Clone)]
pub struct Approver(pub Actor);

/// An authenticated caller with the admin role (403 otherwise).
#[derive(Debug, Clone)]
pub struct AdminRole(pub Actor);

async fn with_role(
    parts: &mut Parts,
    state: &super::AdminState,
    needed: Role,
) -> Result<Actor, ApiError> {
    let Authenticated(actor) = Authenticated::from_request_parts(parts, state).await?;
    require(
        &actor,
        needed,
        &format!("{} {}", parts.method, parts.uri.path()),
    )?;
    Ok(actor)
}

impl FromRequestParts<super::AdminState> for Approver {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &super::AdminState,
    ) -> Result<Self, Self::Rejection> {
        with_role(parts, state, Role::Approver).await.map(Approver)
    }
}

impl FromRequestParts<super::AdminState> for AdminRole {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &super::AdminState,
    ) -> Result<Self, Self::Rejection> {
        with_role(parts, state, Role::Admin).await.map(AdminRole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, role: Role) -> NewToken {
        NewToken {
            name: name.into(),
            role,
            groups: vec!["dba".into()],
            db_user: Some(format!("{name}_db")),
        }
    }

    #[test]
    fn add_creates_the_file_with_only_the_hash() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let secret = add_token(&path, &new("alice", Role::Approver)).unwrap();
        assert!(secret.starts_with("pgw_"));
        assert_eq!(
            secret.len(),
            4 + 43,
            "32 bytes of base64url without padding"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&secret[4..]), "the secret is not stored");
        assert!(text.contains(&hex::encode(hash_secret(&secret))));
        assert!(text.contains("[[token]]"), "{text}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );

        let set = TokenSet::load(&path).unwrap();
        let actor = set
            .authenticate(&secret)
            .expect("the new secret is accepted");
        assert_eq!(
            actor,
            Actor {
                name: "alice".into(),
                role: Role::Approver,
                groups: vec!["dba".into()],
                db_user: Some("alice_db".into()),
            }
        );
    }

    #[test]
    fn duplicate_names_are_refused_and_comments_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, "# issued by the platform team\n").unwrap();
        add_token(&path, &new("alice", Role::Viewer)).unwrap();
        let before = std::fs::read_to_string(&path).unwrap();
        let err = add_token(&path, &new("alice", Role::Admin)).unwrap_err();
        assert!(matches!(err, TokenError::Duplicate { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        add_token(&path, &new("bob", Role::Admin)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# issued by the platform team\n"),
            "{text}"
        );
        assert_eq!(TokenSet::load(&path).unwrap().len(), 2);
        assert!(matches!(
            add_token(&path, &new("bad name", Role::Admin)),
            Err(TokenError::BadInput(_))
        ));
    }

    #[test]
    fn every_secret_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let a = add_token(&path, &new("a", Role::Viewer)).unwrap();
        let b = add_token(&path, &new("b", Role::Viewer)).unwrap();
        assert_ne!(a, b);
        let set = TokenSet::load(&path).unwrap();
        assert_eq!(set.authenticate(&a).unwrap().name, "a");
        assert_eq!(set.authenticate(&b).unwrap().name, "b");
    }

    #[test]
    fn wrong_and_near_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let secret = add_token(&path, &new("a", Role::Admin)).unwrap();
        let set = TokenSet::load(&path).unwrap();
        let mut near = secret.clone();
        near.pop();
        near.push('x');
        for s in ["", "pgw_", near.as_str(), &secret[..secret.len() - 1]] {
            assert!(set.authenticate(s).is_none(), "{s:?}");
        }
        // The stored hash itself is not a secret.
        assert!(set
            .authenticate(&hex::encode(hash_secret(&secret)))
            .is_none());
        assert!(TokenSet::empty().authenticate(&secret).is_none());
    }

    #[test]
    fn reload_swaps_a_good_file_and_keeps_the_set_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let a = add_token(&path, &new("a", Role::Viewer)).unwrap();
        let set = TokenSet::load(&path).unwrap();
        let b = add_token(&path, &new("b", Role::Viewer)).unwrap();
        assert!(set.authenticate(&b).is_none(), "not before the reload");
        assert_eq!(set.reload().unwrap(), 2);
        assert!(set.authenticate(&b).is_some());

        std::fs::write(
            &path,
            "[[token]]\nname = \"a\"\nrole = \"root\"\nsha256 = \"00\"\n",
        )
        .unwrap();
        assert!(matches!(set.reload(), Err(TokenError::Invalid { .. })));
        assert!(set.authenticate(&a).is_some(), "the running set stays");

        // Removing a token from the file revokes it at the next reload.
        std::fs::write(&path, "").unwrap();
        assert_eq!(set.reload().unwrap(), 0);
        assert!(set.authenticate(&a).is_none());
    }

    #[test]
    fn invalid_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        assert!(matches!(
            TokenSet::load(&path),
            Err(TokenError::Read { .. })
        ));
        let h = "a".repeat(64);
        for text in [
            format!("[[token]]\nname = \"a\"\nrole = \"viewer\"\nsha256 = \"{h}\"\nextra = 1\n"),
            format!("[[token]]\nname = \"a\"\nrole = \"viewer\"\nsha256 = \"{}\"\n", "A".repeat(64)),
            format!("[[token]]\nname = \"a\"\nrole = \"viewer\"\nsha256 = \"{h}\"\n[[token]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"{h}\"\n"),
            "token = 1\n".to_string(),
        ] {
            std::fs::write(&path, &text).unwrap();
            assert!(
                matches!(TokenSet::load(&path), Err(TokenError::Invalid { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn roles_are_ordered() {
        let actor = |role| Actor {
            name: "t".into(),
            role,
            groups: vec![],
            db_user: None,
        };
        assert!(require(&actor(Role::Viewer), Role::Viewer, "reading").is_ok());
        let e = require(&actor(Role::Viewer), Role::Approver, "approving").unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::FORBIDDEN);
        assert_eq!(
            e.message,
            "token t has role viewer; approving needs approver or admin"
        );
        assert!(require(&actor(Role::Approver), Role::Approver, "approving").is_ok());
        assert!(require(&actor(Role::Approver), Role::Admin, "revoking").is_err());
        assert!(require(&actor(Role::Admin), Role::Admin, "revoking").is_ok());
    }
}
