//! Where accepted records go between ingest and listeners.
//!
//! - `embedded` (the default): in this process; each tap numbers its records and keeps its
//!   replay buffer in memory. One replica: a listener on another replica would see nothing.
//! - `nats`: a NATS JetStream stream per tap. Any replica accepts ingest for any tap and stores
//!   the accepted batch in the tap's stream (all or nothing); a replica with listeners of a tap
//!   follows its stream with one consumer and fans out locally. Records are numbered by the
//!   stream, the same on every replica, so a listener resumes on any replica and across
//!   restarts while the stream retains the record.
//!
//! Everything around the bus is shared: ingest parsing and checks, authorization, filters,
//! listener queues, loss accounting, the protocol.

mod follow;
mod message;
pub mod nats;
pub mod seal;

use std::sync::Arc;

/// The bus of a relay.
#[derive(Clone, Default)]
pub enum Bus {
    #[default]
    Embedded,
    Nats(Arc<nats::NatsBus>),
}

impl Bus {
    /// Its name, as `--bus` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Bus::Embedded => "embedded",
            Bus::Nats(_) => "nats",
        }
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
