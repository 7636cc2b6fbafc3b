//! The wallet's decisions, once, for both paths (one file over 500 lines on
//! purpose: every rule about the wallet's money is here, side by side, and
//! nowhere else).
//!
//! Each step is a pure function of its message and the rows as read
//! ([`Rows`]) that says what the step does ([`Decision`]): the event it
//! emits, and every row it creates or changes, as the row should be
//! afterwards. The one-message path ([`crate::steps`]) reads rows with SQL
//! and writes the decision with guarded SQL; the batch path
//! ([`crate::book`]) reads and keeps rows in memory and writes them all at
//! the end. Neither decides anything itself, so they cannot drift apart.
//!
//! Money arithmetic here is checked. Money enters wallets only through
//! deposits, every balance is non-negative, and a deposit that would take
//! the money in circulation of its currency past `i64::MAX` is refused
//! ([`entity::circulation`](crate::entity::circulation)), so no balance or
//! held amount can overflow: where one would, an invariant is broken, and
//! the step panics (a bug, not a variant) instead of wrapping. Reserve also
//! declines a payee credit that could not fit, belt and braces.
//!
//! Who may move money is decided here too ([`Policy`]): a wallet pays, and
//! refunds, only for the principal that opened it; deposits come only from
//! the treasury principal. And nothing an event says is trusted where the
//! wallet's own records can check it: an amount must be a positive amount
//! of its currency, a commit or a release must match its hold, a refund
//! must match a committed transfer and fit in what is left of it.
//!
//! An error (a malformed or impossible message: `StepError::Poison`) is
//! returned before anything is decided, so a failed message changes
//! nothing on either path.

use std::fmt;

use chrono::{DateTime, Utc};
use falcon_schemas::command::{Deposit, OpenWallet};
use falcon_schemas::event::{
    DepositedData, FailureData, PaymentData, RefundData, RefundFailureData, RejectedData,
    WalletOpenedData,
};
use falcon_schemas::{Currency, EventData, Money, Reason};

use crate::entity::{
    circulation, deposit, hold, ledger_entry, refund, wallet, HoldState, RefundState,
};
use crate::message::Message;
use crate::FUNDING_ACCOUNT;
use falcon_kernel::StepError;

/// The rows a decision reads, as its path has them: `None` when the row is
/// not in the table (nor created earlier in the batch).
pub(crate) trait Rows {
    fn wallet(&self, wallet_id: &str) -> Option<&wallet::Model>;
    fn hold(&self, payment_id: &str) -> Option<&hold::Model>;
    fn refund(&self, refund_id: &str) -> Option<&refund::Model>;
    fn deposit(&self, reference: &str) -> Option<&deposit::Model>;
    fn circulation(&self, currency: &str) -> Option<&circulation::Model>;
}

/// What one step does. Each row is as the step leaves it: a row its path
/// did not read is new (an insert that must not meet an existing row), a
/// row it read is changed (an update guarded by the row as read).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Decision {
    /// The event to publish; `None` for a repeat, which does nothing.
    pub event: Option<EventData>,
    /// Wallets opened or whose balances moved, each once.
    pub wallets: Vec<wallet::Model>,
    pub hold: Option<hold::Model>,
    pub refund: Option<refund::Model>,
    pub deposit: Option<deposit::Model>,
    pub circulation: Option<circulation::Model>,
    /// The ledger movement, when money moved.
    pub movement: Option<Movement>,
}

impl Decision {
    /// Only an event: a refusal, or a step that changes no row.
    fn emit(event: EventData) -> Decision {
        Decision {
            event: Some(event),
            ..Decision::default()
        }
    }

    /// A repeat: nothing to write, nothing to publish.
    fn nothing() -> Decision {
        Decision::default()
    }
}

/// One ledger movement: `amount_minor` from one account to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Movement {
    /// `deposit:<reference>`, `transfer:<payment_id>`, `refund:<refund_id>`.
    pub id: String,
    pub currency: String,
    pub from: String,
    pub to: String,
    pub amount_minor: i64,
}

impl Movement {
    /// Its two entries, which sum to zero.
    pub(crate) fn rows(&self, now: DateTime<Utc>) -> Vec<ledger_entry::ActiveModel> {
        use sea_orm::Set;
        assert!(
            self.amount_minor > 0,
            "movement {} moves {} minor units: the steps move positive amounts only",
            self.id,
            self.amount_minor
        );
        // Negating a positive i64 cannot overflow.
        [
            (&self.from, -self.amount_minor),
            (&self.to, self.amount_minor),
        ]
        .into_iter()
        .map(|(account, amount_minor)| ledger_entry::ActiveModel {
            movement_id: Set(self.id.clone()),
            account: Set(account.clone()),
            amount_minor: Set(amount_minor),
            currency: Set(self.currency.clone()),
            created_at: Set(now),
            ..Default::default()
        })
        .collect()
    }
}

/// Who may do what, as the wallet is configured: the same on both paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    /// The only principal whose deposits are accepted
    /// (`wallet.treasury_principal`).
    pub treasury: String,
}

impl Policy {
    pub(crate) fn of(settings: &crate::settings::WalletSettings) -> Policy {
        Policy {
            treasury: settings.treasury_principal.clone(),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::of(&crate::settings::WalletSettings::default())
    }
}

/// Decides one message's step.
pub(crate) fn decide(
    message: &Message,
    rows: &impl Rows,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<Decision, StepError> {
    match message {
        Message::Open(c) => Ok(open(c, rows, now)),
        Message::Deposit(c) => Ok(deposit(c, rows, policy, now)),
        Message::Invalid(r) => Ok(Decision::emit(EventData::WalletRejected(r.clone()))),
        Message::Reserve(p) => reserve(p, rows, now),
        Message::Commit(p) => commit(p, rows, now),
        Message::Release(f) => release(f, rows, now),
        Message::Refund(r) => refund(r, rows, now),
    }
}

/// The largest amount of `currency` the ledger can hold, for messages.
fn bound(currency: Currency) -> String {
    format!(
        "{} {currency}",
        Money::from_minor(i64::MAX, currency).amount_string()
    )
}

fn rejected(command: &str, key: &str, reason: Reason, message: String) -> Decision {
    Decision::emit(EventData::WalletRejected(RejectedData {
        command: command.to_owned(),
        key: key.to_owned(),
        reason,
        message,
        field: None,
    }))
}

/// Opens a wallet, owned by the principal that sent the command; a repeat
/// of the same command does nothing, one with another owner, currency or
/// principal is refused.
fn open(c: &OpenWallet, rows: &impl Rows, now: DateTime<Utc>) -> Decision {
    match rows.wallet(&c.wallet_id) {
        None => Decision {
            event: Some(EventData::WalletOpened(WalletOpenedData {
                wallet_id: c.wallet_id.clone(),
                owner: c.owner.clone(),
                currency: c.currency,
            })),
            wallets: vec![wallet::Model {
                wallet_id: c.wallet_id.clone(),
                owner: c.owner.clone(),
                principal: c.principal.clone(),
                currency: c.currency.code().to_owned(),
                balance_minor: 0,
                held_minor: 0,
                created_at: now,
                updated_at: now,
            }],
            ..Decision::default()
        },
        Some(w)
            if w.owner != c.owner
                || w.currency != c.currency.code()
                || w.principal != c.principal =>
        {
            rejected(
                "wallet.open",
                &c.wallet_id,
                Reason::IdempotencyKeyReused,
                format!(
                    "wallet {} exists{} with owner {:?} in {}",
                    w.wallet_id,
                    if w.principal == c.principal {
                        ""
                    } else {
                        ", opened by another principal,"
                    },
                    w.owner,
                    w.currency
                ),
            )
        }
        Some(_) => Decision::nothing(),
    }
}

/// Moves a deposit from the funding account into its wallet, and counts it
/// in its currency's circulation, unless that would pass the bound. Only
/// the treasury mints: a deposit from any other principal is refused
/// before anything about the wallet is looked at.
fn deposit(c: &Deposit, rows: &impl Rows, policy: &Policy, now: DateTime<Utc>) -> Decision {
    let refuse = |reason, message| rejected("wallet.deposit", &c.wallet_id, reason, message);
    if c.principal != policy.treasury {
        return refuse(
            Reason::NotTreasury,
            format!(
                "deposits come from the treasury principal; {:?} is not it",
                c.principal
            ),
        );
    }
    let Some(w) = rows.wallet(&c.wallet_id) else {
        return refuse(
            Reason::WalletNotFound,
            format!("wallet {} does not exist", c.wallet_id),
        );
    };
    let currency = c.amount.currency();
    if w.currency != currency.code() {
        return refuse(
            Reason::CurrencyMismatch,
            format!(
                "wallet {} holds {}, deposit is in {currency}",
                w.wallet_id, w.currency
            ),
        );
    }
    let amount_minor = c.amount.minor();
    if let Some(p) = rows.deposit(&c.reference) {
        if p.wallet_id != c.wallet_id || p.amount_minor != amount_minor || p.currency != w.currency
        {
            return refuse(
                Reason::IdempotencyKeyReused,
                format!(
                    "reference {} was used for {} minor units into {}",
                    p.reference, p.amount_minor, p.wallet_id
                ),
            );
        }
        return Decision::nothing();
    }
    let deposited = rows
        .circulation(&w.currency)
        .map_or(0, |r| r.deposited_minor);
    let Some(deposited_after) = deposited.checked_add(amount_minor) else {
        return refuse(
            Reason::AmountTooLarge,
            format!(
                "a deposit of {} {currency} would take the {currency} in circulation \
                 ({} {currency}) past the ledger's bound of {}",
                c.amount.amount_string(),
                Money::from_minor(deposited, currency).amount_string(),
                bound(currency)
            ),
        );
    };
    let mut to = w.clone();
    to.balance_minor = to.balance_minor.checked_add(amount_minor).expect(
        "a balance is at most the money in circulation, and this deposit keeps that within i64",
    );
    to.updated_at = now;
    Decision {
        event: Some(EventData::WalletDeposited(DepositedData {
            wallet_id: c.wallet_id.clone(),
            reference: c.reference.clone(),
            amount: c.amount.wire_amount(),
            currency,
        })),
        wallets: vec![to],
        deposit: Some(deposit::Model {
            reference: c.reference.clone(),
            wallet_id: c.wallet_id.clone(),
            amount_minor,
            currency: w.currency.clone(),
            created_at: now,
        }),
        circulation: Some(circulation::Model {
            currency: w.currency.clone(),
            deposited_minor: deposited_after,
            updated_at: now,
        }),
        movement: Some(Movement {
            id: format!("deposit:{}", c.reference),
            currency: w.currency.clone(),
            from: FUNDING_ACCOUNT.to_owned(),
            to: c.wallet_id.clone(),
            amount_minor,
        }),
        ..Decision::default()
    }
}

fn payment_money(p: &PaymentData) -> Result<Money, StepError> {
    falcon_kernel::handler::payment_amount(p)
}

/// True when `principal` opened wallet `w` (an event without a principal
/// names no one, so it owns nothing).
fn owned_by(w: &wallet::Model, principal: Option<&str>) -> bool {
    principal == Some(w.principal.as_str())
}

/// How a principal is named in a refusal's message.
fn named(principal: Option<&str>) -> String {
    match principal {
        Some(p) => format!("principal {p:?}"),
        None => "an event without a principal".to_owned(),
    }
}

/// Notes `field` in `differs` when the event's value is not the record's.
fn note<T: PartialEq + fmt::Debug + ?Sized>(
    differs: &mut Vec<String>,
    field: &str,
    event: &T,
    record: &T,
) {
    if event != record {
        differs.push(format!(
            "{field} is {event:?} in the event, {record:?} on record"
        ));
    }
}

/// What of a transfer between `from` and `to` in `currency` differs from
/// hold `h` (empty: the same transfer).
fn transfer_mismatch(h: &hold::Model, from: &str, to: &str, currency: Currency) -> Vec<String> {
    let mut differs = Vec::new();
    note(&mut differs, "from_wallet", from, &h.wallet_id);
    note(&mut differs, "to_wallet", to, &h.to_wallet);
    note(&mut differs, "currency", currency.code(), &h.currency);
    differs
}

/// A commit or a release applies only to the hold of exactly its payment:
/// an event that disagrees with the hold (amount, currency or wallets) is
/// poison, and moves nothing.
fn same_as_hold(h: &hold::Model, p: &PaymentData, amount: Money) -> Result<(), StepError> {
    let mut differs = transfer_mismatch(h, &p.from_wallet, &p.to_wallet, amount.currency());
    note(
        &mut differs,
        "amount_minor",
        &amount.minor(),
        &h.amount_minor,
    );
    if differs.is_empty() {
        return Ok(());
    }
    Err(StepError::Poison(format!(
        "record_mismatch: payment {} disagrees with its hold: {}",
        p.payment_id,
        differs.join("; ")
    )))
}

/// What a step may spend of a wallet now: its balance less its holds
/// (exact: `i128` cannot overflow on two `i64`).
fn available(w: &wallet::Model) -> i128 {
    i128::from(w.balance_minor) - i128::from(w.held_minor)
}

/// The wallets one decision changes, in the order it changes them: a wallet
/// named twice (a payment to itself) is changed twice, in turn, and written
/// once.
#[derive(Default)]
struct Touched(Vec<wallet::Model>);

impl Touched {
    fn get(&mut self, rows: &impl Rows, wallet_id: &str) -> Option<&mut wallet::Model> {
        let at = match self.0.iter().position(|w| w.wallet_id == wallet_id) {
            Some(at) => at,
            None => {
                self.0.push(rows.wallet(wallet_id)?.clone());
                self.0.len() - 1
            }
        };
        self.0.get_mut(at)
    }

    /// A wallet a hold names: it was checked when the hold was reserved,
    /// and wallets are never deleted.
    fn of_hold(
        &mut self,
        rows: &impl Rows,
        wallet_id: &str,
        h: &hold::Model,
    ) -> &mut wallet::Model {
        self.get(rows, wallet_id).unwrap_or_else(|| {
            panic!(
                "wallet {wallet_id} of hold {} is missing: wallets are never deleted",
                h.payment_id
            )
        })
    }
}

/// Why a reservation is refused, if it is; checks in the order the saga
/// has always made them, with the payer's owner checked as soon as the
/// payer is found (so that a principal learns nothing more of a wallet not
/// its own).
fn refusal(p: &PaymentData, amount: Money, rows: &impl Rows) -> Option<(Reason, String)> {
    if let Some(from) = rows.wallet(&p.from_wallet) {
        if !owned_by(from, p.principal.as_deref()) {
            return Some((
                Reason::NotWalletOwner,
                format!(
                    "{} may not pay from wallet {}",
                    named(p.principal.as_deref()),
                    p.from_wallet
                ),
            ));
        }
    }
    for wallet_id in [&p.from_wallet, &p.to_wallet] {
        match rows.wallet(wallet_id) {
            None => {
                return Some((
                    Reason::WalletNotFound,
                    format!("wallet {wallet_id} does not exist"),
                ))
            }
            Some(w) if w.currency != amount.currency().code() => {
                return Some((
                    Reason::CurrencyMismatch,
                    format!(
                        "wallet {wallet_id} holds {}, payment is in {}",
                        w.currency,
                        amount.currency()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let from = rows
        .wallet(&p.from_wallet)
        .expect("the loop above found the payer");
    if available(from) < i128::from(amount.minor()) {
        return Some((
            Reason::InsufficientFunds,
            format!("wallet {} has less than {amount} available", p.from_wallet),
        ));
    }
    let to = rows
        .wallet(&p.to_wallet)
        .expect("the loop above found the payee");
    // Cannot happen within the circulation bound; refused rather than
    // trusted, since the commit could not refuse it any more.
    if p.to_wallet != p.from_wallet && to.balance_minor.checked_add(amount.minor()).is_none() {
        return Some((
            Reason::AmountTooLarge,
            format!(
                "wallet {} cannot receive {amount}: its balance would pass the ledger's bound of {}",
                p.to_wallet,
                bound(amount.currency())
            ),
        ));
    }
    None
}

/// Claims the payment's hold, reserved or declined; a payment whose hold
/// exists (a repeat, or released before it was reserved) does nothing.
fn reserve(p: &PaymentData, rows: &impl Rows, now: DateTime<Utc>) -> Result<Decision, StepError> {
    let amount = payment_money(p)?;
    if rows.hold(&p.payment_id).is_some() {
        return Ok(Decision::nothing());
    }
    let refused = refusal(p, amount, rows);
    let hold = hold::Model {
        payment_id: p.payment_id.clone(),
        wallet_id: p.from_wallet.clone(),
        to_wallet: p.to_wallet.clone(),
        amount_minor: amount.minor(),
        refunded_minor: 0,
        currency: amount.currency().code().to_owned(),
        state: if refused.is_some() {
            HoldState::Declined
        } else {
            HoldState::Reserved
        },
        reason: refused.as_ref().map(|(r, _)| r.as_str().to_owned()),
        created_at: now,
        updated_at: now,
    };
    if let Some((reason, message)) = refused {
        return Ok(Decision {
            event: Some(EventData::ReservationDeclined(FailureData {
                payment: p.clone(),
                reason,
                message,
            })),
            hold: Some(hold),
            ..Decision::default()
        });
    }
    let mut from = rows
        .wallet(&p.from_wallet)
        .expect("the refusal checks found the payer")
        .clone();
    from.held_minor = from
        .held_minor
        .checked_add(amount.minor())
        .expect("held + amount is at most the balance, checked just above, which fits i64");
    from.updated_at = now;
    Ok(Decision {
        event: Some(EventData::FundsReserved(p.clone())),
        wallets: vec![from],
        hold: Some(hold),
        ..Decision::default()
    })
}

/// Moves a reserved hold's money to the payee; a committed one was
/// committed before (a repeat). The event must be the hold's payment.
fn commit(p: &PaymentData, rows: &impl Rows, now: DateTime<Utc>) -> Result<Decision, StepError> {
    let amount = payment_money(p)?;
    let h = rows.hold(&p.payment_id).ok_or_else(|| {
        StepError::Poison(format!(
            "record_mismatch: payment {} has no hold to commit",
            p.payment_id
        ))
    })?;
    same_as_hold(h, p, amount)?;
    match h.state {
        HoldState::Reserved => {}
        HoldState::Committed => return Ok(Decision::nothing()),
        other @ (HoldState::Released | HoldState::Declined) => {
            return Err(StepError::Poison(format!(
                "payment {} captured but its hold is {other}",
                p.payment_id
            )))
        }
    }
    let mut touched = Touched::default();
    let from = touched.of_hold(rows, &h.wallet_id, h);
    unhold(from, h);
    from.balance_minor = from
        .balance_minor
        .checked_sub(h.amount_minor)
        .expect("the balance covers its holds, so it covers this one");
    from.updated_at = now;
    let to = touched.of_hold(rows, &h.to_wallet, h);
    to.balance_minor = to
        .balance_minor
        .checked_add(h.amount_minor)
        .expect("a balance is at most the money in circulation, which deposits keep within i64");
    to.updated_at = now;
    Ok(Decision {
        event: Some(EventData::TransferCommitted(p.clone())),
        wallets: touched.0,
        hold: Some(hold::Model {
            state: HoldState::Committed,
            reason: None,
            updated_at: now,
            ..h.clone()
        }),
        movement: Some(Movement {
            id: format!("transfer:{}", p.payment_id),
            currency: h.currency.clone(),
            from: h.wallet_id.clone(),
            to: h.to_wallet.clone(),
            amount_minor: h.amount_minor,
        }),
        ..Decision::default()
    })
}

/// Takes a reserved hold off its wallet's held amount.
fn unhold(w: &mut wallet::Model, h: &hold::Model) {
    assert!(
        w.held_minor >= h.amount_minor,
        "wallet {} holds {} minor units, less than its reserved hold {} of {}",
        w.wallet_id,
        w.held_minor,
        h.payment_id,
        h.amount_minor
    );
    w.held_minor = w
        .held_minor
        .checked_sub(h.amount_minor)
        .expect("held covers the hold, checked just above");
}

/// Releases a reserved hold, when the event is its payment's. A payment
/// with no hold yet (its deadline passed before the reservation) gets a
/// released tombstone, which moves nothing, so that a reservation still on
/// its way reserves nothing; a declined one held nothing, and the saga may
/// end.
fn release(f: &FailureData, rows: &impl Rows, now: DateTime<Utc>) -> Result<Decision, StepError> {
    let p = &f.payment;
    let amount = payment_money(p)?;
    let released = EventData::FundsReleased(FailureData {
        payment: p.clone(),
        reason: f.reason,
        message: f.message.clone(),
    });
    let Some(h) = rows.hold(&p.payment_id) else {
        return Ok(Decision {
            event: Some(released),
            hold: Some(hold::Model {
                payment_id: p.payment_id.clone(),
                wallet_id: p.from_wallet.clone(),
                to_wallet: p.to_wallet.clone(),
                amount_minor: amount.minor(),
                refunded_minor: 0,
                currency: amount.currency().code().to_owned(),
                state: HoldState::Released,
                reason: Some(f.reason.as_str().to_owned()),
                created_at: now,
                updated_at: now,
            }),
            ..Decision::default()
        });
    };
    same_as_hold(h, p, amount)?;
    match h.state {
        HoldState::Reserved => {}
        HoldState::Released => return Ok(Decision::nothing()),
        HoldState::Declined => return Ok(Decision::emit(released)),
        HoldState::Committed => {
            return Err(StepError::Poison(format!(
                "payment {} to be released but its hold is {}",
                p.payment_id, h.state
            )))
        }
    }
    let mut touched = Touched::default();
    let from = touched.of_hold(rows, &h.wallet_id, h);
    unhold(from, h);
    from.updated_at = now;
    Ok(Decision {
        event: Some(released),
        wallets: touched.0,
        hold: Some(hold::Model {
            state: HoldState::Released,
            reason: Some(f.reason.as_str().to_owned()),
            updated_at: now,
            ..h.clone()
        }),
        ..Decision::default()
    })
}

/// Why a refund is refused, if it is. It must be the refund of a
/// committed transfer of its payment, between the same wallets in the same
/// currency (`record_mismatch`); asked by the principal that owns the payee
/// wallet, which pays it (`not_wallet_owner`); no more than what is left of
/// the transfer (`refund_exceeds_payment`); and the payee must have it
/// available (`insufficient_funds`).
fn refund_refusal(r: &RefundData, amount: Money, rows: &impl Rows) -> Option<(Reason, String)> {
    let Some(h) = rows
        .hold(&r.payment_id)
        .filter(|h| h.state == HoldState::Committed)
    else {
        return Some((
            Reason::RecordMismatch,
            format!(
                "payment {} has no committed transfer to refund",
                r.payment_id
            ),
        ));
    };
    let differs = transfer_mismatch(h, &r.from_wallet, &r.to_wallet, amount.currency());
    if !differs.is_empty() {
        return Some((
            Reason::RecordMismatch,
            format!(
                "refund {} disagrees with the transfer of payment {}: {}",
                r.refund_id,
                r.payment_id,
                differs.join("; ")
            ),
        ));
    }
    // Wallets are never deleted, and a hold is committed only between two
    // that existed: refused rather than trusted all the same.
    let Some(payee) = rows.wallet(&h.to_wallet) else {
        return Some((
            Reason::RecordMismatch,
            format!(
                "wallet {} of payment {} does not exist",
                h.to_wallet, h.payment_id
            ),
        ));
    };
    if !owned_by(payee, r.principal.as_deref()) {
        return Some((
            Reason::NotWalletOwner,
            format!(
                "{} may not refund from wallet {}",
                named(r.principal.as_deref()),
                h.to_wallet
            ),
        ));
    }
    // Exact in i128, whatever an old row holds.
    let left = i128::from(h.amount_minor) - i128::from(h.refunded_minor);
    if i128::from(amount.minor()) > left {
        return Some((
            Reason::RefundExceedsPayment,
            format!(
                "refund {} of {amount} exceeds the {} left to refund of payment {}",
                r.refund_id,
                Money::from_minor(
                    i64::try_from(left.max(0)).unwrap_or(i64::MAX),
                    amount.currency()
                ),
                r.payment_id
            ),
        ));
    }
    if available(payee) < i128::from(amount.minor()) {
        return Some((
            Reason::InsufficientFunds,
            format!("wallet {} has less than {amount} available", h.to_wallet),
        ));
    }
    None
}

/// Moves a refund from the payee back to the payer, if
/// [`refund_refusal`] finds no reason not to, and counts it on the
/// transfer's hold; a refund id seen before does nothing.
fn refund(r: &RefundData, rows: &impl Rows, now: DateTime<Utc>) -> Result<Decision, StepError> {
    let amount = falcon_kernel::handler::refund_amount(r)?;
    if rows.refund(&r.refund_id).is_some() {
        return Ok(Decision::nothing());
    }
    let code = amount.currency().code();
    let row = |state| refund::Model {
        refund_id: r.refund_id.clone(),
        payment_id: r.payment_id.clone(),
        amount_minor: amount.minor(),
        currency: code.to_owned(),
        state,
        created_at: now,
    };
    if let Some((reason, message)) = refund_refusal(r, amount, rows) {
        return Ok(Decision {
            event: Some(EventData::RefundDeclined(RefundFailureData {
                refund: r.clone(),
                reason,
                message,
            })),
            refund: Some(row(RefundState::Declined)),
            ..Decision::default()
        });
    }
    let h = rows
        .hold(&r.payment_id)
        .expect("refund_refusal found the committed hold");
    let mut touched = Touched::default();
    let payee = touched.of_hold(rows, &h.to_wallet, h);
    payee.balance_minor = payee
        .balance_minor
        .checked_sub(amount.minor())
        .expect("the balance covers what is available, checked by refund_refusal");
    payee.updated_at = now;
    let payer = touched.of_hold(rows, &h.wallet_id, h);
    payer.balance_minor = payer
        .balance_minor
        .checked_add(amount.minor())
        .expect("a balance is at most the money in circulation, which deposits keep within i64");
    payer.updated_at = now;
    let refunded_minor = h
        .refunded_minor
        .checked_add(amount.minor())
        .expect("refunded + amount is at most the hold's amount, checked by refund_refusal");
    Ok(Decision {
        event: Some(EventData::RefundCommitted(r.clone())),
        wallets: touched.0,
        hold: Some(hold::Model {
            refunded_minor,
            updated_at: now,
            ..h.clone()
        }),
        refund: Some(row(RefundState::Committed)),
        movement: Some(Movement {
            id: format!("refund:{}", r.refund_id),
            currency: code.to_owned(),
            from: h.to_wallet.clone(),
            to: h.wallet_id.clone(),
            amount_minor: amount.minor(),
        }),
        ..Decision::default()
    })
}
