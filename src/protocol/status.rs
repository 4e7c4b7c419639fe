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

#[cfg(test)]
mod tests {
    use super::*;

    /// A status added to the enum fails to compile here until it has a
    /// place, and the test fails until `ALL` holds it there.
    #[test]
    fn all_lists_every_status_in_order() {
        fn place(status: Status) -> usize {
            match status {
                Status::Ok => 0,
                Status::PayLoadInvalid => 1,
                Status::JsonInvalid => 2,
                Status::CommandNotExist => 3,
                Status::CommandMultiple => 4,
                Status::CommandType => 5,
                Status::CommandSyntax => 6,
                Status::CommandDisabled => 7,
                Status::ParamMissing => 8,
                Status::ValueTypeInvalid => 9,
                Status::ValueSize => 10,
                Status::ValueNotInteger => 11,
                Status::IntegerOverflow => 12,
                Status::SessionNotExist => 13,
                Status::SessionTokenInvalid => 14,
                Status::SessionOpenFail => 15,
                Status::SessionNewFail => 16,
                Status::VersionMismatch => 17,
                Status::SaveComplete => 18,
                Status::SaveDirWriteFail => 19,
                Status::SaveError => 20,
                Status::LoadComplete => 21,
                Status::LoadError => 22,
                Status::MemoryLimit => 23,
                Status::EventsLost => 24,
                Status::Unknown => 25,
            }
        }
        for (i, &status) in Status::ALL.iter().enumerate() {
            assert_eq!(place(status), i, "{status:?}");
        }
        assert_eq!(Status::ALL.len(), place(Status::Unknown) + 1);
    }
}
