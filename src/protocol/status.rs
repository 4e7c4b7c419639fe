//! The status table of the wire protocol: the one place status numbers live.

/// A response status (`st`). Values are the wire numbers of `docs/PROTOCOL.md`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    Ok = 1,
    PayLoadInvalid = 2,
    JsonInvalid = 3,
    CommandNotExist = 10,
    CommandMultiple = 11,
    CommandType = 12,
    CommandSyntax = 13,
    CommandDisabled = 14,
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
    /// Every status, in the table's order.
    pub const ALL: [Status; 26] = [
        Status::Ok,
        Status::PayLoadInvalid,
        Status::JsonInvalid,
        Status::CommandNotExist,
        Status::CommandMultiple,
        Status::CommandType,
        Status::CommandSyntax,
        Status::CommandDisabled,
        Status::ParamMissing,
        Status::ValueTypeInvalid,
        Status::ValueSize,
        Status::ValueNotInteger,
        Status::IntegerOverflow,
        Status::SessionNotExist,
        Status::SessionTokenInvalid,
        Status::SessionOpenFail,
        Status::SessionNewFail,
        Status::VersionMismatch,
        Status::SaveComplete,
        Status::SaveDirWriteFail,
        Status::SaveError,
        Status::LoadComplete,
        Status::LoadError,
        Status::MemoryLimit,
        Status::EventsLost,
        Status::Unknown,
    ];

    /// The number sent on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }
}
