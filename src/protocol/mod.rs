//! What the relay and k8stail both speak, on a floor of its own: it depends on [`crate::k8s`]
//! only, and neither end's code is imported here. One definition per idea, used by both ends:
//!
//! - [`frame`]: the WebSocket frames (`logsocket.v1`), encoded by the relay, decoded by k8stail.
//! - [`tap_key`]: which flow a tap follows, `flow/NS/NAME`: the listener path, the ingest path
//!   and the string an ingest credential signs.
//! - [`query`]: a listener's options (where to start, which records) and their one codec, in the
//!   URL's query string or the `X-Logsocket-Query` header.
//! - [`filter`]: those options compiled, matched against a record.
//! - [`record_meta`]: the fields of a record that routing, filters and authorization read.
//!
//! `docs/protocol.md` describes the same for other clients.

pub mod filter;
pub mod frame;
pub mod query;
pub mod record_meta;
pub mod tap_key;

pub use filter::Filter;
pub use frame::*;
pub use query::{ListenQuery, Start, OPTIONS_HEADER};
pub use record_meta::{meta_of, Meta};
pub use tap_key::TapKey;
