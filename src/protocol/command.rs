//! The command table: every command's wire name and the least role that
//! may run it, written once. The decoder looks names up here, responses are
//! named from here (`<CMD>_RSP`), roles are enforced from here before
//! dispatch, and anything that labels commands (`SV_INFO`, metrics, the
//! fuzz oracle's own list in its tests) is checked against
//! [`CommandName::ALL`].

/// What an authenticated user may do (`docs/PROTOCOL.md`, "Authentication
/// and TLS"). Ordered: each role may do everything the one before it may.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads sessions, follows events.
    Read,
    /// Everything on sessions, keys, owners and events.
    App,
    /// Everything, the server-wide commands too.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Read, Role::App, Role::Admin];

    /// As the users file and `SV_AUTH_RSP` spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::App => "app",
            Role::Admin => "admin",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }
}

/// Declares [`CommandName`] from `Variant => "WIRE_NAME", LeastRole` rows.
macro_rules! command_table {
    ($($variant:ident => $wire:literal, $role:ident;)+) => {
        /// A command the server knows, by name only (its parameters are in
        /// [`super::Command`]).
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        pub enum CommandName {
            $($variant,)+
        }

        impl CommandName {
            /// Every command, in the table's order.
            pub const ALL: &'static [CommandName] = &[$(CommandName::$variant,)+];

            /// The name a request uses, e.g. `SH_GET`.
            pub const fn wire(self) -> &'static str {
                match self {
                    $(CommandName::$variant => $wire,)+
                }
            }

            /// The name its response uses, e.g. `SH_GET_RSP`.
            pub const fn response(self) -> &'static str {
                match self {
                    $(CommandName::$variant => concat!($wire, "_RSP"),)+
                }
            }

            /// How its successful response starts, `{"SH_GET_RSP":{"st":1`:
            /// one copy for the most common start.
            pub const fn ok_prefix(self) -> &'static str {
                match self {
                    $(CommandName::$variant => concat!("{\"", $wire, "_RSP\":{\"st\":1"),)+
                }
            }

            /// The least role that may run it (`SH_TOUCH` with `slide:false`
            /// asks less: see `Command::least_role`).
            pub const fn least_role(self) -> Role {
                match self {
                    $(CommandName::$variant => Role::$role,)+
                }
            }

            /// The command a request names, if the server knows it.
            pub fn from_wire(name: &str) -> Option<CommandName> {
                match name {
                    $($wire => Some(CommandName::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

command_table! {
    // command => wire name, least role;
    New => "SH_NEW", App;
    Open => "SH_OPEN", Read;
    End => "SH_END", App;
    EndAll => "SH_END_ALL", Admin;
    Exists => "SH_EXISTS", Read;
    Info => "SH_INFO", Read;
    InfoAll => "SH_INFO_ALL", Admin;
    Save => "SH_SAVE", Admin;
    Load => "SH_LOAD", Admin;
    Set => "SH_SET", App;
    Add => "SH_ADD", App;
    ClearSet => "SH_CLEAR_SET", App;
    Get => "SH_GET", Read;
    Rmv => "SH_RMV", App;
    Contains => "SH_CONTAINS", Read;
    Count => "SH_COUNT", Read;
    Keys => "SH_KEYS", Read;
    Clear => "SH_CLEAR", App;
    ServerInfo => "SV_INFO", Admin;
    Touch => "SH_TOUCH", App;
    OwnerSessions => "SH_OWNER_SESSIONS", Read;
    OwnerEnd => "SH_OWNER_END", App;
    Incr => "SH_INCR", App;
    Subscribe => "SH_SUBSCRIBE", Read;
    Unsubscribe => "SH_UNSUBSCRIBE", Read;
    Auth => "SV_AUTH", Read;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for &command in CommandName::ALL {
            assert_eq!(CommandName::from_wire(command.wire()), Some(command));
            assert_eq!(command.response(), format!("{}_RSP", command.wire()));
            assert!(seen.insert(command.wire()), "{} twice", command.wire());
        }
        assert_eq!(CommandName::from_wire("SH_NOPE"), None);
        assert_eq!(CommandName::from_wire("sh_get"), None);
    }

    /// The contract's lists, spelled out once more: a row of the table
    /// given the wrong role fails here.
    #[test]
    fn roles_are_the_contracts() {
        let read_only = [
            "SH_GET",
            "SH_INFO",
            "SH_EXISTS",
            "SH_CONTAINS",
            "SH_COUNT",
            "SH_KEYS",
            "SH_OPEN",
            "SH_OWNER_SESSIONS",
            "SH_SUBSCRIBE",
            "SH_UNSUBSCRIBE",
            "SV_AUTH",
        ];
        let admin_only = ["SH_END_ALL", "SH_SAVE", "SH_LOAD", "SH_INFO_ALL", "SV_INFO"];
        for &command in CommandName::ALL {
            let expected = if read_only.contains(&command.wire()) {
                Role::Read
            } else if admin_only.contains(&command.wire()) {
                Role::Admin
            } else {
                Role::App
            };
            assert_eq!(command.least_role(), expected, "{}", command.wire());
        }
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
        assert!(Role::Read < Role::App && Role::App < Role::Admin);
    }
}
