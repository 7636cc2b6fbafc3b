//! `falcon pay`: publishes `falcon.cmd.payment.create` (through `send`) and,
//! with `--wait`, prints the payment saga's terminal event.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use falcon_runtime::Settings;
use falcon_schemas::CommandKind;

use crate::send::{self, WaitArgs};

#[derive(Debug, Args)]
pub struct PayArgs {
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub to: String,
    /// Decimal string, e.g. 12.50.
    #[arg(long)]
    pub amount: String,
    #[arg(long)]
    pub currency: String,
    /// Payment id, the idempotency key (default: generated).
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

pub async fn run(settings: &Settings, args: PayArgs, json: bool) -> Result<ExitCode> {
    let id = args.id.unwrap_or_else(|| send::generated_id("pay"));
    let body = serde_json::json!({ "payment_id": id, "from_wallet": args.from, "to_wallet": args.to, "amount": args.amount, "currency": args.currency });
    send::command(
        settings,
        CommandKind::PaymentCreate,
        body,
        &id,
        &args.wait,
        json,
    )
    .await
}
