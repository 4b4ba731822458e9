//! Budget ledgers: reservations (taken at admission), settlements, usage.

#[allow(unused_imports)]
use super::*;

impl BudgetStore for SqliteStorage {
    fn budget_charge(&self, used: Vec<Charge>) -> BoxFuture<'_, Result<()>> {
        Box::pin(
            self.writer
                .run_durable(move |w| commit::charge_alone(&mut w.conn, &used).map_err(writer::db)),
        )
    }
    fn budget_usage(&self, scope: &LedgerScope) -> BoxFuture<'_, Result<Vec<Usage>>> {
        let scope = scope.clone();
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT scope, window, metric, used, reserved FROM budget WHERE scope = ? ORDER BY window, metric",
            )
            .bind(scope)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            rows.iter()
                .filter_map(|r| usage_row(r).transpose())
                .collect::<std::result::Result<_, sqlx::Error>>()
                .map_err(db)
        })
    }
}
