//! The per-invocation memory and table limiter.
//!
//! Besides enforcing the cap it remembers the peak and whether it ever refused
//! a growth: a Rust guest that runs out of memory aborts with `unreachable`,
//! and only this record lets the host report that as `memory_limit` rather
//! than a generic trap.

use wasmtime::ResourceLimiter;

/// Limits on linear memory (total over all memories) and tables.
#[derive(Debug)]
pub struct Limiter {
    max_memory: usize,
    max_table_elements: usize,
    current: usize,
    peak: usize,
    refused: Option<usize>,
}

impl Limiter {
    pub const MAX_TABLE_ELEMENTS: usize = 100_000;

    pub fn new(max_memory: u64) -> Self {
        Limiter {
            max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
            max_table_elements: Self::MAX_TABLE_ELEMENTS,
            current: 0,
            peak: 0,
            refused: None,
        }
    }

    /// The largest total linear memory seen, in bytes.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// The total the guest asked for when a growth was refused, if one was.
    pub fn refused(&self) -> Option<usize> {
        self.refused
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.current - current.min(self.current) + desired;
        if total > self.max_memory {
            self.refused = Some(total);
            return Ok(false);
        }
        self.current = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}
