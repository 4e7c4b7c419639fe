//! The wire format, and nothing else: the command table, request decoding,
//! response encoding, the status table. Depends on nothing server-side (no
//! shard, no store); the session types it speaks come from [`crate::domain`].

pub mod answer;
pub mod canonical;
mod command;
mod raw;
pub mod request;
pub mod response;
mod status;

pub use command::{CommandName, Role};
pub use request::{Command, Rejection, RequestParser, Secret, Versioning, parse_request};
pub use response::{Response, encode_rejection, encode_status};
pub use status::Status;
