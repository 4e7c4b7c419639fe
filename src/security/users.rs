//! The users file and password checks.
//!
//! The file is a JSON list of `{"name", "passwordSha256", "role"}`; only
//! the SHA-256 of each password is stored. A check hashes what the client
//! sent and compares in constant time, and does the same work for a name
//! that does not exist, so neither the time nor the answer tells a wrong
//! name from a wrong password.

use std::path::Path;
use std::sync::Arc;

use ahash::AHashMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::digest::{SHA256, SHA256_OUTPUT_LEN, digest};
use simd_json::prelude::*;
use subtle::ConstantTimeEq;

use crate::protocol::Role;

/// Who a connection is, once authenticated (or anyone, on a server
/// without users).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: Arc<str>,
    pub role: Role,
}

impl Identity {
    /// Every connection of a server without users: it may do everything,
    /// as before users existed.
    pub fn anyone() -> Identity {
        Identity {
            user: Arc::from(""),
            role: Role::Admin,
        }
    }
}

/// A name and password as a client sent them (Basic auth or `SV_AUTH`).
#[derive(PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ user: {:?}, password: .. }}", self.user)
    }
}

impl Credentials {
    /// The value of an `Authorization` header: `Basic base64(user:password)`
    /// (RFC 7617). None for any other scheme or a malformed value.
    pub fn from_basic(header: &[u8]) -> Option<Credentials> {
        let header = std::str::from_utf8(header).ok()?.trim();
        let (scheme, encoded) = header.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = BASE64.decode(encoded.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        // The name cannot hold a colon (the file refuses one); the password may.
        let (user, password) = decoded.split_once(':')?;
        Some(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

struct User {
    name: Arc<str>,
    password_sha256: [u8; SHA256_OUTPUT_LEN],
    role: Role,
}

/// The users a server knows, as read from its users file.
pub struct Users {
    by_name: AHashMap<Box<str>, User>,
}

impl Users {
    /// Reads and checks a users file.
    pub fn load(path: &Path) -> Result<Users, String> {
        let mut text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Users::parse(&mut text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the file's text (simd-json parses in place).
    pub fn parse(text: &mut [u8]) -> Result<Users, String> {
        let root = simd_json::to_owned_value(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let list = root
            .as_array()
            .ok_or("must be a JSON list of {\"name\", \"passwordSha256\", \"role\"}")?;
        let mut by_name = AHashMap::new();
        for (i, entry) in list.iter().enumerate() {
            let field = |name: &str| {
                entry
                    .get(name)
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("user {i}: \"{name}\" must be a string"))
            };
            let name = field("name")?;
            if name.is_empty() || name.len() > 256 || name.contains(':') {
                return Err(format!(
                    "user {i}: a name is 1 to 256 bytes without ':' (Basic auth splits there)"
                ));
            }
            let hash = field("passwordSha256")?;
            let password_sha256 = parse_sha256(hash)
                .ok_or_else(|| format!("user \"{name}\": passwordSha256 must be 64 hex digits"))?;
            let role = field("role")?;
            let role = Role::from_name(role).ok_or_else(|| {
                format!("user \"{name}\": role must be admin, app or read, not \"{role}\"")
            })?;
            let user = User {
                name: Arc::from(name),
                password_sha256,
                role,
            };
            if by_name.insert(name.into(), user).is_some() {
                return Err(format!("user \"{name}\" is listed twice"));
            }
        }
        Ok(Users { by_name })
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Who `credentials` name, if the password is right.
    pub fn verify(&self, credentials: &Credentials) -> Option<Identity> {
        self.check(&credentials.user, &credentials.password)
    }

    /// Who `user` is, if `password` is theirs.
    pub fn check(&self, user: &str, password: &str) -> Option<Identity> {
        let sent = digest(&SHA256, password.as_bytes());
        // An unknown name is compared against a hash no password has, so
        // it costs what a known one does.
        const NOBODY: [u8; SHA256_OUTPUT_LEN] = [0; SHA256_OUTPUT_LEN];
        let found = self.by_name.get(user);
        let stored = found.map_or(&NOBODY, |u| &u.password_sha256);
        let equal: bool = stored.ct_eq(sent.as_ref()).into();
        match found {
            Some(user) if equal => Some(Identity {
                user: user.name.clone(),
                role: user.role,
            }),
            _ => None,
        }
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; SHA256_OUTPUT_LEN]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 2 * SHA256_OUTPUT_LEN {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; SHA256_OUTPUT_LEN];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The hex SHA-256 of a password, as a users file holds it.
    pub(crate) fn sha256_hex(password: &str) -> String {
        digest(&SHA256, password.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn users() -> Users {
        let text = format!(
            r#"[{{"name":"ann","passwordSha256":"{}","role":"admin"}},
                {{"name":"bob","passwordSha256":"{}","role":"read"}}]"#,
            sha256_hex("s3cret:with colon"),
            sha256_hex("").to_uppercase(),
        );
        Users::parse(&mut text.into_bytes()).unwrap()
    }

    #[test]
    fn a_right_password_names_the_user_and_role() {
        let users = users();
        let ann = users.check("ann", "s3cret:with colon").unwrap();
        assert_eq!((&*ann.user, ann.role), ("ann", Role::Admin));
        assert_eq!(users.check("bob", "").unwrap().role, Role::Read);
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn a_wrong_password_or_name_is_nobody() {
        let users = users();
        assert_eq!(users.check("ann", "s3cret"), None);
        assert_eq!(users.check("ann", ""), None);
        assert_eq!(users.check("nobody", ""), None);
        assert_eq!(users.check("", ""), None);
        assert_eq!(users.check("Ann", "s3cret:with colon"), None);
    }

    #[test]
    fn basic_auth_splits_at_the_first_colon() {
        let header = format!("Basic {}", BASE64.encode("ann:s3cret:with colon"));
        let credentials = Credentials::from_basic(header.as_bytes()).unwrap();
        assert_eq!(credentials.user, "ann");
        assert_eq!(credentials.password, "s3cret:with colon");
        assert!(users().verify(&credentials).is_some());
        let lower = format!("basic  {} ", BASE64.encode("bob:"));
        assert!(Credentials::from_basic(lower.as_bytes()).is_some());
        for bad in [
            "Bearer abc".to_string(),
            "Basic".to_string(),
            "Basic !!!".to_string(),
            format!("Basic {}", BASE64.encode("no colon")),
            format!("Basic {}", BASE64.encode([b'a', b':', 0xff])),
        ] {
            assert_eq!(Credentials::from_basic(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_bad_file_says_what_is_wrong() {
        let hash = sha256_hex("x");
        for (text, says) in [
            ("{}".to_string(), "list"),
            ("[1]".to_string(), "\"name\""),
            (
                r#"[{"name":"a","passwordSha256":"00","role":"app"}]"#.to_string(),
                "64 hex",
            ),
            (
                format!(r#"[{{"name":"a","passwordSha256":"{hash}","role":"root"}}]"#),
                "role",
            ),
            (
                format!(r#"[{{"name":"a:b","passwordSha256":"{hash}","role":"app"}}]"#),
                "':'",
            ),
            (
                format!(
                    r#"[{{"name":"a","passwordSha256":"{hash}","role":"app"}},
                        {{"name":"a","passwordSha256":"{hash}","role":"read"}}]"#
                ),
                "twice",
            ),
            ("[".to_string(), "JSON"),
        ] {
            let error = Users::parse(&mut text.clone().into_bytes()).err().unwrap();
            assert!(error.contains(says), "{text}: {error}");
        }
        let debug = format!("{:?}", Credentials::from_basic(b"Basic YTpi").unwrap());
        assert!(!debug.contains("\"b\""), "{debug}");
    }
}
