//! Who may connect and what they may do: TLS, users, roles.
//!
//! # Layout
//! - `mod.rs`: [`Security`], the settings every shard reads when it accepts
//!   or authenticates a connection, reloaded on SIGHUP.
//! - `users`: the users file, credentials and password checks.
//! - `tls`: the rustls configuration from PEM files.
//!
//! Roles are enforced per request by the shard from the command table
//! (`protocol::command`): [`admit`].
//!
//! Reading the settings takes a read lock once per accepted connection or
//! `SV_AUTH`, never per request: a connection keeps what it was given.

pub mod tls;
pub mod users;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;

use crate::protocol::request::RejectTo;
use crate::protocol::{Command, CommandName, Rejection, Role, Status};
pub use tls::TlsFiles;
pub use users::{Credentials, Identity, Users};

/// What the configuration says of security.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecuritySettings {
    /// None: plain WebSocket.
    pub tls: Option<TlsFiles>,
    /// None: no users; every connection may do everything.
    pub users: Option<PathBuf>,
}

/// TLS and users as loaded; [`Security::reload`] reads the files again.
pub struct Security {
    settings: SecuritySettings,
    current: RwLock<Current>,
}

/// What a new connection is given: the TLS configuration (None: plain)
/// and the users (None: the server has none, everyone may do everything).
#[derive(Clone, Default)]
pub struct Current {
    pub tls: Option<Arc<ServerConfig>>,
    pub users: Option<Arc<Users>>,
}

/// What a reload changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Reloaded {
    pub tls: bool,
    pub users: Option<usize>,
}

impl Security {
    /// Reads every file the settings name; an error names the file.
    pub fn load(settings: SecuritySettings) -> Result<Security, String> {
        let loaded = read(&settings)?;
        Ok(Security {
            settings,
            current: RwLock::new(loaded),
        })
    }

    /// A server without TLS or users.
    pub fn open() -> Security {
        Security {
            settings: SecuritySettings::default(),
            current: RwLock::new(Current::default()),
        }
    }

    /// Reads the files again. All or nothing: on any error what was loaded
    /// stays in force. Connections already open keep their TLS session and
    /// their role; new ones use what was read.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let loaded = read(&self.settings)?;
        let reloaded = Reloaded {
            tls: loaded.tls.is_some(),
            users: loaded.users.as_ref().map(|users| users.len()),
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(reloaded)
    }

    /// What a connection accepted now is given.
    pub fn current(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The TLS configuration for a new connection (None: plain).
    pub fn tls(&self) -> Option<Arc<ServerConfig>> {
        self.current().tls
    }

    /// The users now (None: the server has none and everyone is admin).
    pub fn users(&self) -> Option<Arc<Users>> {
        self.current().users
    }

    /// Whether the server was started with users.
    pub fn has_users(&self) -> bool {
        self.settings.users.is_some()
    }

    pub fn settings(&self) -> &SecuritySettings {
        &self.settings
    }
}

fn read(settings: &SecuritySettings) -> Result<Current, String> {
    let tls = match &settings.tls {
        Some(files) => Some(tls::server_config(files)?),
        None => None,
    };
    let users = match &settings.users {
        Some(path) => Some(Arc::new(Users::load(path)?)),
        None => None,
    };
    Ok(Current { tls, users })
}

/// Whether a connection whose role is `who` (None: not authenticated yet) may
/// run `request`; if not, the rejection it is answered with instead (15
/// before authentication, 16 for a role that may not). A request that is
/// already a rejection keeps its own answer once authenticated; before,
/// only a malformed `SV_AUTH` does.
#[inline]
pub fn admit(who: Option<Role>, request: Result<Command, Rejection>) -> Result<Command, Rejection> {
    let status = match (who, &request) {
        (Some(role), Ok(command)) if role >= command.least_role() => return request,
        (Some(_), Ok(_)) => Status::NotPermitted,
        (Some(_), Err(_)) => return request,
        (None, Ok(Command::Auth { .. })) => return request,
        (None, Err(rejection)) if matches!(&rejection.to, RejectTo::Command(name) if name == CommandName::Auth.wire()) =>
        {
            return request;
        }
        (None, _) => Status::AuthRequired,
    };
    let (to, tkn) = match &request {
        Ok(command) => (
            RejectTo::Command(command.kind().wire().to_string()),
            command.token(),
        ),
        Err(rejection) => (rejection.to.clone(), rejection.tkn),
    };
    let message = match status {
        Status::NotPermitted => "your role does not allow this command",
        _ => "authenticate first (Authorization: Basic, or SV_AUTH)",
    };
    Err(Rejection {
        to,
        status,
        message: Some(message),
        tkn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_request;

    fn who(role: Role) -> Role {
        role
    }

    fn status_of(result: &Result<Command, Rejection>) -> Option<Status> {
        result.as_ref().err().map(|r| r.status)
    }

    #[test]
    fn before_authentication_only_sv_auth_passes() {
        let get = parse_request(br#"{"SH_GET":{"tkn":"7","keys":["a"]}}"#);
        let refused = admit(None, get).unwrap_err();
        assert_eq!(refused.status, Status::AuthRequired);
        assert_eq!(refused.to, RejectTo::Command("SH_GET".into()));
        assert_eq!(refused.tkn, Some(7));
        let auth = parse_request(br#"{"SV_AUTH":{"user":"u","password":"p"}}"#);
        assert!(admit(None, auth).is_ok());
        // A malformed SV_AUTH says what is wrong with it.
        let bad = admit(None, parse_request(br#"{"SV_AUTH":{"user":"u"}}"#));
        assert_eq!(status_of(&bad), Some(Status::ParamMissing));
        // Anything else, even garbage, is told to authenticate.
        let garbage = admit(None, parse_request(b"not json"));
        assert_eq!(status_of(&garbage), Some(Status::AuthRequired));
        let unknown = admit(None, parse_request(br#"{"SH_NOPE":{}}"#));
        assert_eq!(status_of(&unknown), Some(Status::AuthRequired));
    }

    #[test]
    fn a_role_runs_what_the_table_allows_and_is_refused_the_rest() {
        let end_all = || parse_request(br#"{"SH_END_ALL":{}}"#);
        assert!(admit(Some(who(Role::Admin)), end_all()).is_ok());
        let refused = admit(Some(who(Role::App)), end_all()).unwrap_err();
        assert_eq!(refused.status, Status::NotPermitted);
        assert_eq!(refused.to, RejectTo::Command("SH_END_ALL".into()));
        let set = || parse_request(br#"{"SH_SET":{"tkn":5,"keys":{"a":1}}}"#);
        assert!(admit(Some(who(Role::App)), set()).is_ok());
        assert_eq!(
            status_of(&admit(Some(who(Role::Read)), set())),
            Some(Status::NotPermitted)
        );
        // Touching without sliding only reads.
        let peek = parse_request(br#"{"SH_TOUCH":{"tkn":5,"slide":false}}"#);
        assert!(admit(Some(who(Role::Read)), peek).is_ok());
        let slide = parse_request(br#"{"SH_TOUCH":{"tkn":5}}"#);
        assert_eq!(
            status_of(&admit(Some(who(Role::Read)), slide)),
            Some(Status::NotPermitted)
        );
        // Rejections keep their own status once authenticated.
        let bad = admit(Some(who(Role::Read)), parse_request(b"[]"));
        assert_eq!(status_of(&bad), Some(Status::CommandSyntax));
        assert!(CommandName::ALL.contains(&CommandName::Auth));
    }
}
