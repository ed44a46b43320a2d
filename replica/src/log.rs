//! raft-rs logs through slog; this drain hands its records to `tracing` (target
//! `palisade::raft`), so the replica's log is the controller's log.

use slog::{Drain, Level, OwnedKVList, Record, KV};

pub struct TracingDrain;

struct Fields(String);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = Fields(String::new());
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let msg = record.msg();
        match record.level() {
            Level::Critical | Level::Error => {
                tracing::error!(target: "palisade::raft", "{msg}{}", fields.0)
            }
            Level::Warning => tracing::warn!(target: "palisade::raft", "{msg}{}", fields.0),
            Level::Info => tracing::info!(target: "palisade::raft", "{msg}{}", fields.0),
            Level::Debug => tracing::debug!(target: "palisade::raft", "{msg}{}", fields.0),
            Level::Trace => tracing::trace!(target: "palisade::raft", "{msg}{}", fields.0),
        }
        Ok(())
    }
}

pub fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!())
}
