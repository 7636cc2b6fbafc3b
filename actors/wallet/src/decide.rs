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
//! An error (a malformed or impossible message: `StepError::Poison`) is
//! returned before anything is decided, so a failed message changes
//! nothing on either path.

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

/// Decides one message's step.
pub(crate) fn decide(
    message: &Message,
    rows: &impl Rows,
    now: DateTime<Utc>,
) -> Result<Decision, StepError> {
    match message {
        Message::Open(c) => Ok(open(c, rows, now)),
        Message::Deposit(c) => Ok(deposit(c, rows, now)),
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

/// Opens a wallet; a repeat of the same command does nothing, one with
/// another owner or currency is refused.
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
                currency: c.currency.code().to_owned(),
                balance_minor: 0,
                held_minor: 0,
                created_at: now,
                updated_at: now,
            }],
            ..Decision::default()
        },
        Some(w) if w.owner != c.owner || w.currency != c.currency.code() => rejected(
            "wallet.open",
            &c.wallet_id,
            Reason::IdempotencyKeyReused,
            format!(
                "wallet {} exists with owner {:?} in {}",
                w.wallet_id, w.owner, w.currency
            ),
        ),
        Some(_) => Decision::nothing(),
    }
}

/// Moves a deposit from the funding account into its wallet, and counts it
/// in its currency's circulation, unless that would pass the bound.
fn deposit(c: &Deposit, rows: &impl Rows, now: DateTime<Utc>) -> Decision {
    let refuse = |reason, message| rejected("wallet.deposit", &c.wallet_id, reason, message);
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

/// A saga event's amount; malformed or not positive, the event is poison.
fn positive(
    what: &str,
    id: &str,
    money: Result<Money, falcon_schemas::Invalid>,
) -> Result<Money, StepError> {
    match money {
        Ok(m) if m.minor() > 0 => Ok(m),
        Ok(m) => Err(StepError::Poison(format!(
            "{what} {id} has a non-positive amount {}",
            m.amount_string()
        ))),
        Err(e) => Err(StepError::Poison(format!(
            "{what} {id} has a malformed amount: {e}"
        ))),
    }
}

fn payment_money(p: &PaymentData) -> Result<Money, StepError> {
    positive("payment", &p.payment_id, p.money())
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
/// has always made them.
fn refusal(p: &PaymentData, amount: Money, rows: &impl Rows) -> Option<(Reason, String)> {
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
/// committed before (a repeat).
fn commit(p: &PaymentData, rows: &impl Rows, now: DateTime<Utc>) -> Result<Decision, StepError> {
    let h = rows
        .hold(&p.payment_id)
        .ok_or_else(|| StepError::Poison(format!("payment {} has no hold", p.payment_id)))?;
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

/// Releases a reserved hold. A payment with no hold yet (its deadline
/// passed before the reservation) gets a released tombstone, so that a
/// reservation still on its way reserves nothing; a declined one held
/// nothing, and the saga may end.
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
                currency: amount.currency().code().to_owned(),
                state: HoldState::Released,
                reason: Some(f.reason.as_str().to_owned()),
                created_at: now,
                updated_at: now,
            }),
            ..Decision::default()
        });
    };
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

/// Moves a refund from the payee back to the payer, if the payee has it
/// available; a refund id seen before does nothing.
fn refund(r: &RefundData, rows: &impl Rows, now: DateTime<Utc>) -> Result<Decision, StepError> {
    let amount = positive("refund", &r.refund_id, r.money())?;
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
    let mut touched = Touched::default();
    // The payee gives the money back, if it still has it available (a
    // missing payee, or one in another currency, has none).
    let Some(payee) = touched
        .get(rows, &r.to_wallet)
        .filter(|w| w.currency == code && available(w) >= i128::from(amount.minor()))
    else {
        return Ok(Decision {
            event: Some(EventData::RefundDeclined(RefundFailureData {
                refund: r.clone(),
                reason: Reason::InsufficientFunds,
                message: format!("wallet {} has less than {amount} available", r.to_wallet),
            })),
            refund: Some(row(RefundState::Declined)),
            ..Decision::default()
        });
    };
    payee.balance_minor = payee
        .balance_minor
        .checked_sub(amount.minor())
        .expect("the balance covers what is available, checked just above");
    payee.updated_at = now;
    // The payer was the payment's, in its currency: anything else is an
    // event the saga cannot have produced.
    let payer = touched.get(rows, &r.from_wallet).ok_or_else(|| {
        StepError::Poison(format!(
            "refund {}: wallet {} does not exist",
            r.refund_id, r.from_wallet
        ))
    })?;
    if payer.currency != code {
        return Err(StepError::Poison(format!(
            "refund {}: wallet {} holds {}, refund is in {code}",
            r.refund_id, r.from_wallet, payer.currency
        )));
    }
    payer.balance_minor = payer
        .balance_minor
        .checked_add(amount.minor())
        .expect("a balance is at most the money in circulation, which deposits keep within i64");
    payer.updated_at = now;
    Ok(Decision {
        event: Some(EventData::RefundCommitted(r.clone())),
        wallets: touched.0,
        refund: Some(row(RefundState::Committed)),
        movement: Some(Movement {
            id: format!("refund:{}", r.refund_id),
            currency: code.to_owned(),
            from: r.to_wallet.clone(),
            to: r.from_wallet.clone(),
            amount_minor: amount.minor(),
        }),
        ..Decision::default()
    })
}
