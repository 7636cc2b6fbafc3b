//! Client commands: types, wire form, and parsing with machine-readable
//! reasons.
//!
//! Parsing is two-staged so that nothing is lost: a body that is not a JSON
//! object is [`ParseError::Unparseable`] (the consumer dead-letters it); a
//! JSON object that breaks a rule is [`ParseError::Rejected`] (the actor
//! publishes a rejection event with the reason).

use rust_decimal::Decimal;
use serde_json::{json, Map, Value};

use crate::currency::Currency;
use crate::ids::is_valid_id;
use crate::money::{parse_decimal, Money};
use crate::reason::{Invalid, Reason};
use crate::subject::{command_principal, CMD_PREFIX};

/// Longest `owner` accepted, in bytes.
pub const OWNER_LEN_MAX: usize = 200;

/// The four commands of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    WalletOpen,
    WalletDeposit,
    PaymentCreate,
    PaymentRefund,
}

impl CommandKind {
    pub const ALL: [CommandKind; 4] = [
        CommandKind::WalletOpen,
        CommandKind::WalletDeposit,
        CommandKind::PaymentCreate,
        CommandKind::PaymentRefund,
    ];

    /// `"wallet.open"`, `"payment.create"`, …
    pub fn as_str(&self) -> &'static str {
        match self {
            CommandKind::WalletOpen => "wallet.open",
            CommandKind::WalletDeposit => "wallet.deposit",
            CommandKind::PaymentCreate => "payment.create",
            CommandKind::PaymentRefund => "payment.refund",
        }
    }

    /// The subject `principal` publishes it on, e.g.
    /// `falcon.cmd.payment.create.alice`.
    pub fn subject(&self, principal: &str) -> String {
        format!("{CMD_PREFIX}{}.{principal}", self.as_str())
    }

    /// The command a subject names: `falcon.cmd.<aggregate>.<verb>`, with
    /// or without the principal token after it.
    pub fn from_subject(subject: &str) -> Option<CommandKind> {
        let rest = subject.strip_prefix(CMD_PREFIX)?;
        let name = match rest.match_indices('.').nth(1) {
            Some((i, _)) => &rest[..i],
            None => rest,
        };
        CommandKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The body field whose value is the idempotency key.
    pub fn key_field(&self) -> &'static str {
        match self {
            CommandKind::WalletOpen => "wallet_id",
            CommandKind::WalletDeposit => "reference",
            CommandKind::PaymentCreate => "payment_id",
            CommandKind::PaymentRefund => "refund_id",
        }
    }

    /// The body field that keys the rejection event's subject: the payment
    /// (or refund) for payment commands, the wallet for wallet commands.
    pub fn rejection_key_field(&self) -> &'static str {
        match self {
            CommandKind::WalletOpen | CommandKind::WalletDeposit => "wallet_id",
            CommandKind::PaymentCreate => "payment_id",
            CommandKind::PaymentRefund => "refund_id",
        }
    }
}

/// `falcon.cmd.wallet.open`: open a wallet in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenWallet {
    pub wallet_id: String,
    pub owner: String,
    pub currency: Currency,
    /// The sender: the principal token of the subject it came on.
    pub principal: String,
}

/// `falcon.cmd.wallet.deposit`: fund a wallet from the system funding account.
/// Idempotency key: `reference`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    pub wallet_id: String,
    pub amount: Money,
    pub reference: String,
    /// The sender: the principal token of the subject it came on.
    pub principal: String,
}

/// `falcon.cmd.payment.create`: move `amount` from one wallet to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePayment {
    pub payment_id: String,
    pub from_wallet: String,
    pub to_wallet: String,
    pub amount: Money,
    /// The sender: the principal token of the subject it came on.
    pub principal: String,
}

/// `falcon.cmd.payment.refund`: give back all (no `amount`) or part of a
/// completed payment. The amount is in the payment's currency; its scale is
/// checked against that currency by the payment actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundPayment {
    pub payment_id: String,
    pub refund_id: String,
    pub amount: Option<Decimal>,
    /// The sender: the principal token of the subject it came on.
    pub principal: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    OpenWallet(OpenWallet),
    Deposit(Deposit),
    CreatePayment(CreatePayment),
    RefundPayment(RefundPayment),
}

/// A command that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is not a JSON object: nothing to reject, dead-letter it.
    #[error("unparseable command body: {0}")]
    Unparseable(String),
    /// A JSON object that breaks a rule: publish a rejection event.
    #[error("command rejected: {0}")]
    Rejected(Rejection),
}

/// What a rejection event needs: which command, its key when it had a valid
/// one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `payment.create`, …, or the unknown name after `falcon.cmd.`.
    pub command: String,
    pub kind: Option<CommandKind>,
    /// The rejection key field's value, when present and a valid id.
    pub key: Option<String>,
    pub error: Invalid,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.command, self.error)
    }
}

impl Command {
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::OpenWallet(_) => CommandKind::WalletOpen,
            Command::Deposit(_) => CommandKind::WalletDeposit,
            Command::CreatePayment(_) => CommandKind::PaymentCreate,
            Command::RefundPayment(_) => CommandKind::PaymentRefund,
        }
    }

    /// The idempotency key's value.
    pub fn key(&self) -> &str {
        match self {
            Command::OpenWallet(c) => &c.wallet_id,
            Command::Deposit(c) => &c.reference,
            Command::CreatePayment(c) => &c.payment_id,
            Command::RefundPayment(c) => &c.refund_id,
        }
    }

    /// Parses and validates a command published on `subject`.
    pub fn parse(subject: &str, body: &[u8]) -> Result<Command, ParseError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ParseError::Unparseable(format!("body is not JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(ParseError::Unparseable(format!(
                "body is JSON but not an object: {}",
                json_kind(&value)
            )));
        };
        let name = subject.strip_prefix(CMD_PREFIX).unwrap_or(subject);
        let Some(kind) = CommandKind::from_subject(subject) else {
            return Err(ParseError::Rejected(Rejection {
                command: name.to_owned(),
                kind: None,
                key: None,
                error: Invalid::new(
                    Reason::UnknownCommand,
                    format!("no command is published on {subject}"),
                ),
            }));
        };
        let rejected = |error| {
            let key = map
                .get(kind.rejection_key_field())
                .and_then(Value::as_str)
                .filter(|k| is_valid_id(k))
                .map(str::to_owned);
            ParseError::Rejected(Rejection {
                command: kind.as_str().to_owned(),
                kind: Some(kind),
                key,
                error,
            })
        };
        let Some(principal) = command_principal(subject) else {
            return Err(rejected(Invalid::new(
                Reason::Unauthenticated,
                format!(
                    "{subject} names no principal: commands are published on {}",
                    kind.subject("<principal>")
                ),
            )));
        };
        Command::from_map(kind, &map, principal.to_owned()).map_err(rejected)
    }

    /// The principal that sent it.
    pub fn principal(&self) -> &str {
        match self {
            Command::OpenWallet(c) => &c.principal,
            Command::Deposit(c) => &c.principal,
            Command::CreatePayment(c) => &c.principal,
            Command::RefundPayment(c) => &c.principal,
        }
    }

    fn from_map(
        kind: CommandKind,
        map: &Map<String, Value>,
        principal: String,
    ) -> Result<Command, Invalid> {
        Ok(match kind {
            CommandKind::WalletOpen => {
                let wallet_id = id(map, "wallet_id")?;
                let owner = string(map, "owner")?;
                if owner.trim().is_empty() || owner.len() > OWNER_LEN_MAX {
                    return Err(Invalid::field(
                        Reason::InvalidField,
                        "owner",
                        format!("owner must be 1 to {OWNER_LEN_MAX} bytes and not blank"),
                    ));
                }
                Command::OpenWallet(OpenWallet {
                    wallet_id,
                    owner,
                    currency: currency(map)?,
                    principal,
                })
            }
            CommandKind::WalletDeposit => {
                let wallet_id = id(map, "wallet_id")?;
                let reference = id(map, "reference")?;
                let currency = currency(map)?;
                Command::Deposit(Deposit {
                    wallet_id,
                    amount: Money::positive(amount(map)?, currency)?,
                    reference,
                    principal,
                })
            }
            CommandKind::PaymentCreate => {
                let payment_id = id(map, "payment_id")?;
                let from_wallet = id(map, "from_wallet")?;
                let to_wallet = id(map, "to_wallet")?;
                let currency = currency(map)?;
                let amount = Money::positive(amount(map)?, currency)?;
                if from_wallet == to_wallet {
                    return Err(Invalid::field(
                        Reason::SameWallet,
                        "to_wallet",
                        "from_wallet and to_wallet must differ",
                    ));
                }
                Command::CreatePayment(CreatePayment {
                    payment_id,
                    from_wallet,
                    to_wallet,
                    amount,
                    principal,
                })
            }
            CommandKind::PaymentRefund => {
                let payment_id = id(map, "payment_id")?;
                let refund_id = id(map, "refund_id")?;
                let amount = match map.get("amount") {
                    None | Some(Value::Null) => None,
                    Some(_) => {
                        let a = amount(map)?;
                        if a <= Decimal::ZERO {
                            return Err(Invalid::field(
                                Reason::AmountNotPositive,
                                "amount",
                                format!("amount must be positive, got {a}"),
                            ));
                        }
                        Some(a)
                    }
                };
                Command::RefundPayment(RefundPayment {
                    payment_id,
                    refund_id,
                    amount,
                    principal,
                })
            }
        })
    }

    /// The subject this command is published on.
    pub fn subject(&self) -> String {
        self.kind().subject(self.principal())
    }

    /// The wire body (a JSON object; amounts as decimal strings).
    pub fn to_json(&self) -> Value {
        match self {
            Command::OpenWallet(c) => json!({
                "wallet_id": c.wallet_id, "owner": c.owner, "currency": c.currency,
            }),
            Command::Deposit(c) => json!({
                "wallet_id": c.wallet_id, "amount": c.amount.amount_string(),
                "currency": c.amount.currency(), "reference": c.reference,
            }),
            Command::CreatePayment(c) => json!({
                "payment_id": c.payment_id, "from_wallet": c.from_wallet, "to_wallet": c.to_wallet,
                "amount": c.amount.amount_string(), "currency": c.amount.currency(),
            }),
            Command::RefundPayment(c) => {
                let mut v = json!({ "payment_id": c.payment_id, "refund_id": c.refund_id });
                if let Some(a) = c.amount {
                    v["amount"] = Value::String(a.to_string());
                }
                v
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_json()).expect("a JSON value always serializes")
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string(map: &Map<String, Value>, field: &'static str) -> Result<String, Invalid> {
    match map.get(field) {
        None | Some(Value::Null) => Err(Invalid::field(
            Reason::MissingField,
            field,
            format!("{field} is required"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(Invalid::field(
            Reason::InvalidField,
            field,
            format!("{field} must be a string, got {}", json_kind(other)),
        )),
    }
}

fn id(map: &Map<String, Value>, field: &'static str) -> Result<String, Invalid> {
    let s = string(map, field)?;
    if is_valid_id(&s) {
        Ok(s)
    } else {
        Err(Invalid::field(
            Reason::InvalidId,
            field,
            format!(
                "{field} must be 1-64 characters of [A-Za-z0-9_-], got {}",
                crate::shown(&s)
            ),
        ))
    }
}

fn currency(map: &Map<String, Value>) -> Result<Currency, Invalid> {
    let code = string(map, "currency")?;
    Currency::from_code(&code).ok_or_else(|| {
        Invalid::field(
            Reason::UnknownCurrency,
            "currency",
            format!(
                "{} is not an ISO 4217 currency FalconPay accepts",
                crate::shown(&code)
            ),
        )
    })
}

fn amount(map: &Map<String, Value>) -> Result<Decimal, Invalid> {
    match map.get("amount") {
        Some(Value::Number(n)) => Err(Invalid::field(
            Reason::InvalidAmount,
            "amount",
            format!("amount must be a decimal string such as \"12.50\", not the JSON number {n}"),
        )),
        _ => parse_decimal(&string(map, "amount")?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(subject: &str, body: &str) -> Rejection {
        match Command::parse(subject, body.as_bytes()) {
            Err(ParseError::Rejected(r)) => r,
            other => panic!("expected a rejection for {body}, got {other:?}"),
        }
    }

    #[test]
    fn parses_and_round_trips_every_command() {
        let bodies = [
            (
                "falcon.cmd.wallet.open.alice",
                r#"{"wallet_id":"w1","owner":"Ada","currency":"USD"}"#,
            ),
            (
                "falcon.cmd.wallet.deposit.alice",
                r#"{"wallet_id":"w1","amount":"10.00","currency":"USD","reference":"dep-1"}"#,
            ),
            (
                "falcon.cmd.payment.create.alice",
                r#"{"payment_id":"p1","from_wallet":"w1","to_wallet":"w2","amount":"12.50","currency":"USD"}"#,
            ),
            (
                "falcon.cmd.payment.refund.alice",
                r#"{"payment_id":"p1","refund_id":"r1","amount":"2.5"}"#,
            ),
            (
                "falcon.cmd.payment.refund.alice",
                r#"{"payment_id":"p1","refund_id":"r2"}"#,
            ),
        ];
        for (subject, body) in bodies {
            let cmd = Command::parse(subject, body.as_bytes()).expect("valid command");
            assert_eq!(cmd.subject(), subject);
            let again = Command::parse(subject, &cmd.to_bytes()).expect("own output parses");
            assert_eq!(cmd, again);
        }
    }

    #[test]
    fn every_rule_has_its_reason() {
        let pay = "falcon.cmd.payment.create.alice";
        let cases = [
            (
                r#"{"from_wallet":"w1","to_wallet":"w2","amount":"1","currency":"USD"}"#,
                Reason::MissingField,
                None,
            ),
            (
                r#"{"payment_id":"p.1","from_wallet":"w1","to_wallet":"w2","amount":"1","currency":"USD"}"#,
                Reason::InvalidId,
                None,
            ),
            (
                r#"{"payment_id":"p1","from_wallet":"w1","to_wallet":"w2","amount":"0","currency":"USD"}"#,
                Reason::AmountNotPositive,
                Some("p1"),
            ),
            (
                r#"{"payment_id":"p1","from_wallet":"w1","to_wallet":"w2","amount":"-3","currency":"USD"}"#,
                Reason::AmountNotPositive,
                Some("p1"),
            ),
            (
                r#"{"payment_id":"p1","from_wallet":"w1","to_wallet":"w2","amount":"1.001","currency":"USD"}"#,
                Reason::AmountScaleExceedsCurrency,
                Some("p1"),
            ),
            (
                r#"{"payment_id":"p1","from_wallet":"w1","to_wallet":"w2","amount":"1.5","currency":"JPY"}"#,
                Reason::AmountScaleExceedsCurrency,
                Some("p1"),
            ),
            (
                r#"{"payment_id":"p1","from_wallet":"w1","to_wallet":"w2","amount":"1","currency":"XYZ"}"#,
                Reason::UnknownCurrency,
                Some("p1"),
            ),
            (
                r#"{"payment_id":"p1","from_wallet":"w1","to_wallet":"w2","amount":12.5,"currency":"USD"}"#,
                Reason::InvalidAmount,
                Some("p1"),
            ),
            (
                r#"{"payment_id":"p1","from_wallet":"w1","to_wallet":"w2","amount":"abc","currency":"USD"}"#,
                Reason::InvalidAmount,
                Some("p1"),
            ),
            (
                r#"{"payment_id":"p1","from_wallet":"w1","to_wallet":"w1","amount":"1","currency":"USD"}"#,
                Reason::SameWallet,
                Some("p1"),
            ),
            (
                r#"{"payment_id":7,"from_wallet":"w1","to_wallet":"w2","amount":"1","currency":"USD"}"#,
                Reason::InvalidField,
                None,
            ),
        ];
        for (body, reason, key) in cases {
            let r = reject(pay, body);
            assert_eq!(r.error.reason, reason, "{body}");
            assert_eq!(r.key.as_deref(), key, "{body}");
        }
        assert_eq!(
            reject("falcon.cmd.payment.explode.alice", "{}")
                .error
                .reason,
            Reason::UnknownCommand
        );
    }

    #[test]
    fn the_principal_comes_from_the_subject_and_must_be_there() {
        let body = r#"{"payment_id":"p1","from_wallet":"w1","to_wallet":"w2","amount":"1","currency":"USD"}"#;
        let cmd = Command::parse("falcon.cmd.payment.create.bob", body.as_bytes())
            .expect("a valid command");
        assert_eq!(cmd.principal(), "bob");
        assert_eq!(cmd.subject(), "falcon.cmd.payment.create.bob");
        for subject in [
            "falcon.cmd.payment.create",
            "falcon.cmd.payment.create.a.b",
            "falcon.cmd.payment.create.",
            &format!("falcon.cmd.payment.create.{}", "x".repeat(65)),
        ] {
            let r = reject(subject, body);
            assert_eq!(r.error.reason, Reason::Unauthenticated, "{subject}");
            assert_eq!(r.key.as_deref(), Some("p1"), "{subject}");
        }
        // A principal in the body is not a principal: the subject is.
        let forged = r#"{"payment_id":"p1","from_wallet":"w1","to_wallet":"w2","amount":"1","currency":"USD","principal":"treasury"}"#;
        let cmd = Command::parse("falcon.cmd.payment.create.bob", forged.as_bytes())
            .expect("unknown fields are ignored");
        assert_eq!(cmd.principal(), "bob");
    }

    #[test]
    fn refusals_never_echo_more_than_a_bounded_prefix() {
        let huge = "x".repeat(100_000);
        let body = format!(
            r#"{{"payment_id":"{huge}","from_wallet":"w1","to_wallet":"w2","amount":"1","currency":"{huge}"}}"#
        );
        let r = reject("falcon.cmd.payment.create.alice", &body);
        assert_eq!(r.error.reason, Reason::InvalidId);
        assert!(
            r.error.message.len() < 200,
            "{} bytes",
            r.error.message.len()
        );
        let body = format!(
            r#"{{"payment_id":"p1","from_wallet":"w1","to_wallet":"w2","amount":"1","currency":"{huge}"}}"#
        );
        let r = reject("falcon.cmd.payment.create.alice", &body);
        assert_eq!(r.error.reason, Reason::UnknownCurrency);
        assert!(
            r.error.message.len() < 200,
            "{} bytes",
            r.error.message.len()
        );
    }

    #[test]
    fn non_objects_are_unparseable() {
        for body in ["", "not json", "[1,2]", "\"s\"", "{\"a\":"] {
            assert!(matches!(
                Command::parse("falcon.cmd.payment.create.alice", body.as_bytes()),
                Err(ParseError::Unparseable(_))
            ));
        }
    }
}
