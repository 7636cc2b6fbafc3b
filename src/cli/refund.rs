//! `falcon refund`: publishes `falcon.cmd.payment.refund` (through `send`)
//! and, with `--wait`, prints the refund saga's terminal event.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use falcon_runtime::Settings;
use falcon_schemas::CommandKind;

use crate::send::{self, WaitArgs};

#[derive(Debug, Args)]
pub struct RefundArgs {
    #[arg(long)]
    pub payment: String,
    /// Decimal string; the whole remaining amount when absent.
    #[arg(long)]
    pub amount: Option<String>,
    /// Refund id, the idempotency key (default: generated).
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

pub async fn run(settings: &Settings, args: RefundArgs, json: bool) -> Result<ExitCode> {
    let id = args.id.unwrap_or_else(|| send::generated_id("ref"));
    let mut body = serde_json::json!({ "payment_id": args.payment, "refund_id": id });
    if let Some(amount) = args.amount {
        body["amount"] = serde_json::Value::String(amount);
    }
    send::command(
        settings,
        CommandKind::PaymentRefund,
        body,
        &id,
        &args.wait,
        json,
    )
    .await
}
