//! The named projections: each is a unit of its own with one read-model table, one
//! checkpoint row, one durable consumer and one live task, so that one stopped
//! projection leaves the others running.

use std::fmt;
use std::str::FromStr;

/// The schema that holds every read model (migration `20261124000200_read_models.sql`).
pub const SCHEMA: &str = "read_model";

/// A projection of the event log into one read-model table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    /// `read_model.accounts`: one row per account, as `GET /accounts/{id}` shows it.
    Accounts,
    /// `read_model.account_transactions`: the statement, with the balance after each
    /// money movement.
    AccountTransactions,
    /// `read_model.transfers`: one row per executed transfer.
    Transfers,
}

impl Projection {
    /// Every projection, in the order their checkpoint rows are locked (a fixed order,
    /// so two rebuilds can never deadlock on them).
    pub const ALL: [Projection; 3] = [
        Projection::AccountTransactions,
        Projection::Accounts,
        Projection::Transfers,
    ];

    /// The name in the checkpoint table, the CLI, the admin API and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Projection::Accounts => "accounts",
            Projection::AccountTransactions => "account_transactions",
            Projection::Transfers => "transfers",
        }
    }

    /// The table it writes, without the schema. The same as its name, by convention.
    pub fn table(self) -> &'static str {
        self.name()
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`Projection::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no projection is named {0:?}; known: accounts, account_transactions, transfers")]
pub struct UnknownProjection(pub String);

impl FromStr for Projection {
    type Err = UnknownProjection;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Projection::ALL
            .into_iter()
            .find(|projection| projection.name() == name)
            .ok_or_else(|| UnknownProjection(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projection_parses_back_from_its_name() {
        for projection in Projection::ALL {
            assert_eq!(projection.name().parse::<Projection>(), Ok(projection));
        }
    }

    #[test]
    fn an_unknown_name_is_refused() {
        assert!("balances".parse::<Projection>().is_err());
    }
}
