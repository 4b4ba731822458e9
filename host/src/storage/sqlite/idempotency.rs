//! Idempotency keys and their answers.

#[allow(unused_imports)]
use super::*;

impl IdempotencyStore for SqliteStorage {
    fn idempotency_begin(&self, begin: KeyBegin) -> BoxFuture<'_, Result<IdempotencyBegin>> {
        Box::pin(
            self.writer
                .run(move |w| commit::idempotency_begin(&mut w.conn, &begin).map_err(writer::db)),
        )
    }
}
