//! The wire format, and nothing else: request decoding, response encoding,
//! the status table. Depends on nothing server-side (no shard, no store).

mod raw;
pub mod request;
pub mod response;
mod status;

pub use request::{
    Command, ExpirySettings, KeyValue, NewSession, Rejection, RequestParser, Token, parse_request,
};
pub use response::{Response, encode_rejection, encode_status};
pub use status::Status;
