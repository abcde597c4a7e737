//! Money as types that cannot hold an invalid value.
//!
//! Amounts, limits and balances are integers of the currency's minor unit (cents for EUR):
//! floating point cannot represent 0.10 exactly, and a ledger must add up to the cent.
//! Each type serialises as a plain JSON number or string, and deserialising goes through
//! the same checks as the constructor, so an invalid value in a request or a stored
//! event is refused at the border.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// A positive quantity of money moved by one command, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Amount(i64);

impl Amount {
    /// The largest amount, in minor units: 10^18 (10^16 EUR) is far more than any real
    /// movement, and keeps nine of them summed well inside `i64` (about 9.2 * 10^18), so
    /// balances overflow only after many maximal movements, which we refuse explicitly.
    /// Set by API.md; clients rely on it.
    pub const MAX_MINOR_UNITS: i64 = 1_000_000_000_000_000;

    /// The largest amount as an [`Amount`].
    pub const MAX: Amount = Amount(Self::MAX_MINOR_UNITS);

    /// Parses minor units: must be > 0 and <= [`Amount::MAX`].
    pub fn new(minor_units: i64) -> Result<Amount, ValidationError> {
        if minor_units <= 0 {
            return Err(ValidationError::new(
                "amount",
                format!("must be greater than 0, got {minor_units}"),
            ));
        }
        if minor_units > Self::MAX_MINOR_UNITS {
            return Err(ValidationError::new(
                "amount",
                format!("must be at most {}, got {minor_units}", Self::MAX_MINOR_UNITS),
            ));
        }
        Ok(Amount(minor_units))
    }

    /// The amount in minor units.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for Amount {
    type Error = ValidationError;

    fn try_from(minor_units: i64) -> Result<Self, Self::Error> {
        Amount::new(minor_units)
    }
}

impl From<Amount> for i64 {
    fn from(amount: Amount) -> i64 {
        amount.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How far below zero an account's balance may go, in minor units. Zero (the default)
/// means no overdraft.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct OverdraftLimit(i64);

impl OverdraftLimit {
    /// No overdraft: the balance may not go below zero.
    pub const ZERO: OverdraftLimit = OverdraftLimit(0);

    /// The largest limit: the same bound as an amount, so `-limit` and every balance
    /// check stay far from `i64::MIN`.
    pub const MAX: OverdraftLimit = OverdraftLimit(Amount::MAX_MINOR_UNITS);

    /// Parses minor units: must be in `0..=Amount::MAX`.
    pub fn new(minor_units: i64) -> Result<OverdraftLimit, ValidationError> {
        if !(0..=Amount::MAX_MINOR_UNITS).contains(&minor_units) {
            return Err(ValidationError::new(
                "overdraft_limit",
                format!(
                    "must be between 0 and {}, got {minor_units}",
                    Amount::MAX_MINOR_UNITS
                ),
            ));
        }
        Ok(OverdraftLimit(minor_units))
    }

    /// The limit in minor units.
    pub fn get(self) -> i64 {
        self.0
    }

    /// The lowest balance this limit allows: `-limit`.
    pub fn floor(self) -> Balance {
        // Cannot overflow: the limit is at most Amount::MAX, far from i64::MIN.
        Balance(-self.0)
    }
}

impl TryFrom<i64> for OverdraftLimit {
    type Error = ValidationError;

    fn try_from(minor_units: i64) -> Result<Self, Self::Error> {
        OverdraftLimit::new(minor_units)
    }
}

impl From<OverdraftLimit> for i64 {
    fn from(limit: OverdraftLimit) -> i64 {
        limit.0
    }
}

impl fmt::Display for OverdraftLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An account's balance in minor units; negative within the overdraft limit.
///
/// Any `i64` is a representable balance (it is what the database's BIGINT holds); the
/// rules that keep it above `-overdraft_limit` live in the account, and arithmetic is
/// checked so a balance never wraps around.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Balance(i64);

impl Balance {
    /// The balance of a newly opened account.
    pub const ZERO: Balance = Balance(0);

    pub fn new(minor_units: i64) -> Balance {
        Balance(minor_units)
    }

    /// The balance in minor units.
    pub fn get(self) -> i64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The balance after a credit, or `None` if it would overflow.
    pub fn checked_add(self, amount: Amount) -> Option<Balance> {
        self.0.checked_add(amount.get()).map(Balance)
    }

    /// The balance after a debit, or `None` if it would overflow.
    pub fn checked_sub(self, amount: Amount) -> Option<Balance> {
        self.0.checked_sub(amount.get()).map(Balance)
    }
}

impl From<Balance> for i64 {
    fn from(balance: Balance) -> i64 {
        balance.0
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An ISO 4217 alphabetic currency code (`"EUR"`), one the ISO table knows.
///
/// Only the exact upper-case code is accepted (`"eur"` is refused): the code is stored in
/// events and compared between accounts, so it has one spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// Parses an ISO 4217 alphabetic code.
    pub fn parse(code: &str) -> Result<Currency, ValidationError> {
        iso_currency::Currency::from_code(code)
            .map(Currency)
            .ok_or_else(|| {
                ValidationError::new(
                    "currency",
                    format!("{code:?} is not an ISO 4217 alphabetic currency code"),
                )
            })
    }

    /// The three-letter code, as in `"EUR"`.
    pub fn as_str(&self) -> &'static str {
        self.0.code()
    }

    /// The ISO table's entry, for names and minor-unit exponents.
    pub fn iso(&self) -> iso_currency::Currency {
        self.0
    }
}

impl std::str::FromStr for Currency {
    type Err = ValidationError;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Currency::parse(code)
    }
}

impl TryFrom<String> for Currency {
    type Error = ValidationError;

    fn try_from(code: String) -> Result<Self, Self::Error> {
        Currency::parse(&code)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> String {
        currency.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn amount(minor_units: i64) -> Amount {
        Amount::new(minor_units).expect("valid amount in test")
    }

    #[test]
    fn amount_of_zero_is_refused() {
        assert_eq!(Amount::new(0).map_err(|e| e.field), Err("amount"));
    }

    #[test]
    fn negative_amount_is_refused() {
        assert!(Amount::new(-1).is_err());
        assert!(Amount::new(i64::MIN).is_err());
    }

    #[test]
    fn amount_above_the_maximum_is_refused() {
        assert!(Amount::new(1_000_000_000_000_001).is_err());
        assert!(Amount::new(i64::MAX).is_err());
    }

    #[test]
    fn amounts_from_one_to_the_maximum_are_accepted() {
        assert_eq!(amount(1).get(), 1);
        assert_eq!(amount(1_000_000_000_000_000), Amount::MAX);
    }

    #[test]
    fn amount_serialises_as_a_plain_number() {
        assert_eq!(serde_json::to_value(amount(1250)).ok(), Some(json!(1250)));
        assert_eq!(
            serde_json::from_value::<Amount>(json!(1250)).ok(),
            Some(amount(1250))
        );
    }

    #[test]
    fn deserialising_an_invalid_amount_fails() {
        assert!(serde_json::from_value::<Amount>(json!(0)).is_err());
        assert!(serde_json::from_value::<Amount>(json!(-5)).is_err());
        assert!(serde_json::from_value::<Amount>(json!(1.5)).is_err());
        assert!(serde_json::from_value::<Amount>(json!("100")).is_err());
        assert!(serde_json::from_value::<Amount>(json!(1_000_000_000_000_001_i64)).is_err());
    }

    #[test]
    fn overdraft_limit_defaults_to_zero() {
        assert_eq!(OverdraftLimit::default(), OverdraftLimit::ZERO);
        assert_eq!(OverdraftLimit::default().get(), 0);
    }

    #[test]
    fn overdraft_limit_accepts_zero_to_the_maximum_amount() {
        assert!(OverdraftLimit::new(0).is_ok());
        assert_eq!(
            OverdraftLimit::new(Amount::MAX_MINOR_UNITS).ok(),
            Some(OverdraftLimit::MAX)
        );
    }

    #[test]
    fn negative_or_huge_overdraft_limit_is_refused() {
        assert_eq!(
            OverdraftLimit::new(-1).map_err(|e| e.field),
            Err("overdraft_limit")
        );
        assert!(OverdraftLimit::new(Amount::MAX_MINOR_UNITS + 1).is_err());
        assert!(serde_json::from_value::<OverdraftLimit>(json!(-1)).is_err());
    }

    #[test]
    fn overdraft_floor_is_the_negated_limit() {
        let limit = OverdraftLimit::new(500).expect("valid limit");
        assert_eq!(limit.floor(), Balance::new(-500));
    }

    #[test]
    fn balance_arithmetic_is_checked() {
        assert_eq!(Balance::ZERO.checked_add(amount(5)), Some(Balance::new(5)));
        assert_eq!(Balance::ZERO.checked_sub(amount(5)), Some(Balance::new(-5)));
        assert_eq!(Balance::new(i64::MAX).checked_add(amount(1)), None);
        assert_eq!(Balance::new(i64::MIN).checked_sub(amount(1)), None);
    }

    #[test]
    fn balance_serialises_as_a_plain_number() {
        assert_eq!(serde_json::to_value(Balance::new(-42)).ok(), Some(json!(-42)));
        assert_eq!(
            serde_json::from_value::<Balance>(json!(-42)).ok(),
            Some(Balance::new(-42))
        );
    }

    #[test]
    fn known_currency_codes_parse() {
        let eur = Currency::parse("EUR").expect("EUR is a currency");
        assert_eq!(eur.as_str(), "EUR");
        assert_eq!(eur.to_string(), "EUR");
        assert_eq!("JPY".parse::<Currency>().map(|c| c.as_str()), Ok("JPY"));
    }

    #[test]
    fn unknown_or_misspelt_currency_codes_are_refused() {
        for code in ["", "EU", "EURO", "eur", "ABC", " EUR", "€"] {
            assert_eq!(
                Currency::parse(code).map_err(|e| e.field),
                Err("currency"),
                "{code:?}"
            );
        }
    }

    #[test]
    fn currency_serialises_as_a_plain_string() {
        let eur = Currency::parse("EUR").expect("EUR is a currency");
        assert_eq!(serde_json::to_value(eur).ok(), Some(json!("EUR")));
        assert_eq!(serde_json::from_value::<Currency>(json!("EUR")).ok(), Some(eur));
        assert!(serde_json::from_value::<Currency>(json!("XYZ")).is_err());
        assert!(serde_json::from_value::<Currency>(json!(978)).is_err());
    }
}
