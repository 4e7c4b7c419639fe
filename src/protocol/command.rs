//! The command table: every command's wire name, written once. The decoder
//! looks names up here, responses are named from here (`<CMD>_RSP`), and
//! anything that labels commands (`SV_INFO`, metrics, the fuzz oracle's own
//! list in its tests) is checked against [`CommandName::ALL`].

/// Declares [`CommandName`] from `Variant => "WIRE_NAME"` pairs.
macro_rules! command_table {
    ($($variant:ident => $wire:literal,)+) => {
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
    New => "SH_NEW",
    Open => "SH_OPEN",
    End => "SH_END",
    EndAll => "SH_END_ALL",
    Exists => "SH_EXISTS",
    Info => "SH_INFO",
    InfoAll => "SH_INFO_ALL",
    Save => "SH_SAVE",
    Load => "SH_LOAD",
    Set => "SH_SET",
    Add => "SH_ADD",
    ClearSet => "SH_CLEAR_SET",
    Get => "SH_GET",
    Rmv => "SH_RMV",
    Contains => "SH_CONTAINS",
    Count => "SH_COUNT",
    Keys => "SH_KEYS",
    Clear => "SH_CLEAR",
    ServerInfo => "SV_INFO",
    Touch => "SH_TOUCH",
    OwnerSessions => "SH_OWNER_SESSIONS",
    OwnerEnd => "SH_OWNER_END",
    Incr => "SH_INCR",
    Subscribe => "SH_SUBSCRIBE",
    Unsubscribe => "SH_UNSUBSCRIBE",
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
}
