//! The status table of the wire protocol: the one place status numbers live.

/// Declares [`Status`] and [`Status::ALL`] from one list, so no status can
/// be left out of either.
macro_rules! status_table {
    ($($variant:ident = $code:literal,)+) => {
        /// A response status (`st`). Values are the wire numbers of `docs/PROTOCOL.md`.
        #[derive(Copy, Clone, Debug, PartialEq, Eq)]
        #[repr(u16)]
        pub enum Status {
            $($variant = $code,)+
        }

        impl Status {
            /// Every status, in the table's order.
            pub const ALL: &'static [Status] = &[$(Status::$variant,)+];
        }
    };
}

status_table! {
    Ok = 1,
    PayLoadInvalid = 2,
    JsonInvalid = 3,
    CommandNotExist = 10,
    CommandMultiple = 11,
    CommandType = 12,
    CommandSyntax = 13,
    CommandDisabled = 14,
    AuthRequired = 15,
    NotPermitted = 16,
    AuthFailed = 17,
    ParamMissing = 26,
    ValueTypeInvalid = 41,
    ValueSize = 42,
    ValueNotInteger = 43,
    IntegerOverflow = 44,
    SessionNotExist = 100,
    SessionTokenInvalid = 101,
    SessionOpenFail = 102,
    SessionNewFail = 103,
    VersionMismatch = 104,
    SaveComplete = 121,
    SaveDirWriteFail = 122,
    SaveError = 123,
    LoadComplete = 141,
    LoadError = 142,
    MemoryLimit = 150,
    EventsLost = 160,
    Unknown = 1000,
}

impl Status {
    /// The number sent on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }
}
