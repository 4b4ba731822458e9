//! The refund workflow tool: `lookup-order`, `create-refund-draft`, `issue-refund`.

wit_bindgen::generate!({
    world: "example:refund/refund",
    path: ["../../wit", "wit"],
    generate_all,
});

use toolhost::tool::log::{Level, emit};

struct Refund;

fn orders() -> Vec<Order> {
    let order = |n: u32, amount: f64, status: OrderStatus, shipped: Option<&str>, tier: Tier| Order {
        id: format!("ord_{n}"),
        email: format!("customer{n}@example.com"),
        address: format!("{n} Main Street, Springfield"),
        card_last4: format!("{:04}", n % 10_000),
        amount_usd: amount,
        status,
        shipped_on: shipped.map(str::to_string),
        tier,
    };
    vec![
        order(1001, 42.50, OrderStatus::Delivered, Some("2026-10-02"), Tier::Free),
        order(1002, 129.99, OrderStatus::Shipped, Some("2026-11-20"), Tier::Pro),
        order(1003, 15.00, OrderStatus::Paid, None, Tier::Free),
        order(1004, 980.00, OrderStatus::Delivered, Some("2026-09-14"), Tier::Enterprise),
        order(1005, 60.00, OrderStatus::Refunded, Some("2026-08-01"), Tier::Pro),
    ]
}

fn find(order_id: &str) -> Result<Order, String> {
    orders()
        .into_iter()
        .find(|o| o.id == order_id)
        .ok_or_else(|| format!("no order with id {order_id:?}"))
}

fn check_amount(order: &Order, amount_usd: f64) -> Result<(), String> {
    if !(amount_usd > 0.0) {
        return Err(format!("amount must be positive, got {amount_usd}"));
    }
    if amount_usd > order.amount_usd {
        return Err(format!(
            "amount {amount_usd} exceeds the order total {}",
            order.amount_usd
        ));
    }
    match order.status {
        OrderStatus::Refunded | OrderStatus::Cancelled => {
            Err(format!("order {} cannot be refunded in its state", order.id))
        }
        _ => Ok(()),
    }
}

impl Guest for Refund {
    fn lookup_order(order_id: String) -> Result<Order, String> {
        emit(Level::Info, &format!("lookup {order_id}"));
        find(&order_id)
    }

    fn create_refund_draft(
        order_id: String,
        amount_usd: f64,
        reason: RefundReason,
        note: Option<String>,
    ) -> Result<RefundDraft, String> {
        let order = find(&order_id)?;
        check_amount(&order, amount_usd)?;
        Ok(RefundDraft {
            draft_id: format!("draft_{}_{}", order.id, (amount_usd * 100.0) as u64),
            order_id,
            amount_usd,
            reason,
            note,
        })
    }

    fn issue_refund(
        order_id: String,
        amount_usd: f64,
        idempotency_key: Option<String>,
    ) -> Result<RefundReceipt, String> {
        let order = find(&order_id)?;
        check_amount(&order, amount_usd)?;
        emit(Level::Warn, &format!("refund issued for {order_id}: {amount_usd} USD"));
        Ok(RefundReceipt {
            refund_id: format!("re_{}_{}", order.id, (amount_usd * 100.0) as u64),
            order_id,
            amount_usd,
            idempotency_key,
        })
    }
}

export!(Refund);
