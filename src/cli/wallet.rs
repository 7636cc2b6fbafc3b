//! `falcon wallet open | deposit | balance`: publishes the wallet commands
//! (through `send`) and reads a balance from the wallet actor's database.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;
use falcon_kernel::ActorDef;
use falcon_runtime::Settings;
use falcon_schemas::CommandKind;
use falcon_wallet::WalletActor;

use crate::output;
use crate::send::{self, WaitArgs};

#[derive(Debug, Subcommand)]
pub enum WalletVerb {
    /// Open a wallet (falcon.cmd.wallet.open).
    Open {
        wallet_id: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        currency: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Deposit into a wallet from the funding account (falcon.cmd.wallet.deposit).
    Deposit {
        wallet_id: String,
        /// Decimal string, e.g. 100.00.
        amount: String,
        #[arg(long)]
        currency: String,
        /// Idempotency key (default: generated).
        #[arg(long)]
        reference: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show a wallet's balance, held and available amounts.
    Balance { wallet_id: String },
}

pub async fn run(settings: &Settings, verb: WalletVerb, json: bool) -> Result<ExitCode> {
    match verb {
        WalletVerb::Open {
            wallet_id,
            owner,
            currency,
            wait,
        } => {
            let body =
                serde_json::json!({ "wallet_id": wallet_id, "owner": owner, "currency": currency });
            send::command(
                settings,
                CommandKind::WalletOpen,
                body,
                &wallet_id,
                &wait,
                json,
            )
            .await
        }
        WalletVerb::Deposit {
            wallet_id,
            amount,
            currency,
            reference,
            wait,
        } => {
            let reference = reference.unwrap_or_else(|| send::generated_id("dep"));
            let body = serde_json::json!({ "wallet_id": wallet_id, "amount": amount, "currency": currency, "reference": reference });
            send::command(
                settings,
                CommandKind::WalletDeposit,
                body,
                &wallet_id,
                &wait,
                json,
            )
            .await
        }
        WalletVerb::Balance { wallet_id } => balance(settings, &wallet_id, json).await,
    }
}

async fn balance(settings: &Settings, wallet_id: &str, json: bool) -> Result<ExitCode> {
    // The balances are in the database of the actor whose crate answers
    // the query.
    let db = falcon_runtime::runtime::open_store(WalletActor::ACTOR, settings).await?;
    let Some(b) = falcon_wallet::balance(&db, wallet_id).await? else {
        bail!("wallet {wallet_id} does not exist");
    };
    if json {
        output::json(&b)?;
    } else {
        output::table(
            &[
                "WALLET",
                "OWNER",
                "CURRENCY",
                "BALANCE",
                "HELD",
                "AVAILABLE",
            ],
            &[vec![
                b.wallet_id,
                b.owner,
                b.currency,
                b.balance,
                b.held,
                b.available,
            ]],
        );
    }
    Ok(ExitCode::SUCCESS)
}
