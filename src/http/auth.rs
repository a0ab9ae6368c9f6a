//! API keys: loaded from a file ([`ApiKeys::from_file`]), kept in memory only as SHA-256
//! digests, checked in constant time ([`subtle`]), presented as `Authorization: Bearer KEY`
//! or `X-API-Key: KEY` (E2B's header). A server without keys is open; it may only listen on
//! a loopback address (see [`super::check_listen`]).
//!
//! The key file: one key a line; blank lines and lines starting with `#` are ignored; each
//! key is 16 to 512 printable ASCII characters without spaces. The file must not be
//! readable or writable by "others" (mode `o-rwx`, e.g. 0600 or 0640): a refused file names
//! the `chmod` that fixes it.

use std::path::Path;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use agentkernel_core::{Error, Result};

use super::{ApiError, ServerState};

/// Who made a request: the first 12 hex digits of its key's SHA-256, or `anonymous` on an
/// open server. Sandboxes belong to the key that created them (caps count per key; another
/// key sees a 404).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub String);

impl KeyId {
    /// The caller of an open server.
    pub fn anonymous() -> Self {
        KeyId("anonymous".into())
    }
}

/// The server's API keys, as SHA-256 digests.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

const MIN_KEY_LEN: usize = 16;
const MAX_KEY_LEN: usize = 512;
const KEY_HINT: &str = "use 16 to 512 printable ASCII characters without spaces, e.g. the output of `openssl rand -hex 32`";

impl ApiKeys {
    /// No keys: an open server (loopback only).
    pub fn none() -> Self {
        ApiKeys::default()
    }

    /// These keys (each checked as a line of the key file is).
    pub fn from_keys<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> Result<Self> {
        let mut digests = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let key = key.as_ref();
            let ok = (MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len())
                && key.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(Error::invalid(
                    format!(
                        "API key {} is not a usable key ({} characters)",
                        i + 1,
                        key.len()
                    ),
                    KEY_HINT,
                ));
            }
            digests.push(Sha256::digest(key.as_bytes()).into());
        }
        Ok(ApiKeys { digests })
    }

    /// The keys in `path` (see the module doc for its format and mode).
    pub fn from_file(path: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading the API key file {}", path.display()), e))?;
        let mode = meta.permissions().mode();
        if mode & 0o007 != 0 {
            return Err(Error::invalid(
                format!(
                    "the API key file {} is open to other users (mode {:o})",
                    path.display(),
                    mode & 0o777
                ),
                format!("restrict it: chmod 600 {}", path.display()),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading the API key file {}", path.display()), e))?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if lines.is_empty() {
            return Err(Error::invalid(
                format!("the API key file {} holds no key", path.display()),
                format!("put one key a line in it; {KEY_HINT}"),
            ));
        }
        Self::from_keys(lines).map_err(|e| match e {
            Error::InvalidRequest { message, hint } => Error::InvalidRequest {
                message: format!("{} (in {})", message, path.display()),
                hint,
            },
            other => other,
        })
    }

    /// Whether the server has no keys (and is open).
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// The caller presenting `key`, if it is one of the keys: its digest is compared with
    /// every key's in constant time (no early exit, so timing tells nothing of which key
    /// or how much of it matched).
    pub fn check(&self, key: &str) -> Option<KeyId> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        for known in &self.digests {
            found |= known.ct_eq(&digest);
        }
        bool::from(found).then(|| KeyId(hex(&digest[..6])))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The middleware of every route but `/healthz`: an open server lets every request in as
/// [`KeyId::anonymous`]; otherwise a valid key is required, in `Authorization: Bearer` or
/// `X-API-Key` (when both are sent, both must be valid keys), and the caller's [`KeyId`] is
/// put in the request's extensions.
pub async fn require_key(
    State(state): State<ServerState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let keys = &state.keys;
    if keys.is_empty() {
        req.extensions_mut().insert(KeyId::anonymous());
        return Ok(next.run(req).await);
    }
    let headers = req.headers();
    let bearer = match headers.get(axum::http::header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let v = v.to_str().unwrap_or("");
            let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Err(unauthorized("the Authorization header is not `Bearer KEY`"));
            }
            Some(token.trim().to_owned())
        }
    };
    let x_api_key = headers
        .get("x-api-key")
        .map(|v| v.to_str().unwrap_or("").trim().to_owned());
    let presented: Vec<String> = bearer.into_iter().chain(x_api_key).collect();
    if presented.is_empty() {
        return Err(unauthorized("no API key was sent"));
    }
    let mut who = None;
    for key in &presented {
        match keys.check(key) {
            Some(id) => who = Some(id),
            None => return Err(unauthorized("the API key is not one of this server's")),
        }
    }
    let who = who.ok_or_else(|| unauthorized("no API key was sent"))?;
    req.extensions_mut().insert(who);
    Ok(next.run(req).await)
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        message,
        "send a key of the server's --api-keys file as `Authorization: Bearer KEY` or `X-API-Key: KEY`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_by_digest_and_bad_keys_refused() {
        let keys = ApiKeys::from_keys(["k1-0123456789abcdef", "k2-0123456789abcdef"]).unwrap();
        assert_eq!(keys.len(), 2);
        let a = keys.check("k1-0123456789abcdef").unwrap();
        let b = keys.check("k2-0123456789abcdef").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.0.len(), 12);
        assert!(keys.check("k1-0123456789abcde").is_none());
        assert!(keys.check("").is_none());
        for bad in ["short", "has a space 0123456789", "tab\t0123456789abcdef"] {
            let e = ApiKeys::from_keys([bad]).unwrap_err();
            assert!(e.to_string().contains("openssl rand"), "{e}");
        }
    }

    #[test]
    fn the_key_file_skips_comments_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(
            &path,
            "# ops team\n\n  key-aaaaaaaaaaaaaaaa  \n#key-bbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ApiKeys::from_file(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let keys = ApiKeys::from_file(&path).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys.check("key-aaaaaaaaaaaaaaaa").is_some());
        assert!(keys.check("key-bbbbbbbbbbbbbbbb").is_none());
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(
            ApiKeys::from_file(&path)
                .unwrap_err()
                .to_string()
                .contains("no key")
        );
    }
}
