//! The data plane: TUN and UDP I/O, buffer pool, batching; drives the engine.

pub mod batch;
pub mod sys;
