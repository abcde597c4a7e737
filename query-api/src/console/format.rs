//! How the console shows numbers and times to people (issue 17, "Usable"): amounts held
//! in a currency's minor units as decimal amounts with the currency code, and times in
//! UTC with the offset written out, so nobody has to guess a time zone.

use chrono::{DateTime, Utc};

/// `minor_units` of `currency` as a decimal amount with its code: `1250` EUR is
/// `"12.50 EUR"`, `-5` JPY is `"-5 JPY"`. The number of decimals is ISO 4217's
/// exponent for the code (none for a code without one, such as XAU); an unknown code
/// (none is stored: the domain refuses them) is shown in minor units.
pub fn money(minor_units: i64, currency: &str) -> String {
    let exponent = domain::Currency::parse(currency)
        .ok()
        .and_then(|currency| currency.iso().exponent())
        .unwrap_or(0);
    format!("{} {currency}", decimal(minor_units, u32::from(exponent)))
}

/// `minor_units` with `exponent` decimals, without loss for any `i64` (the sign is kept
/// apart, so `i64::MIN` has a magnitude).
pub fn decimal(minor_units: i64, exponent: u32) -> String {
    let sign = if minor_units < 0 { "-" } else { "" };
    let magnitude = minor_units.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{magnitude}");
    }
    let Some(scale) = 10u64.checked_pow(exponent) else {
        return format!("{sign}{magnitude}");
    };
    let width = exponent as usize;
    format!("{sign}{}.{:0width$}", magnitude / scale, magnitude % scale)
}

/// A time as people read it here: `2026-11-30 15:09:36 UTC (+00:00)`.
pub fn utc(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S UTC (+00:00)").to_string()
}

/// A time as a machine reads it (the `datetime` attribute of `<time>`): RFC 3339, UTC.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_decimal_with_the_currency_exponent_and_code() {
        assert_eq!(money(1250, "EUR"), "12.50 EUR");
        assert_eq!(money(-5, "EUR"), "-0.05 EUR");
        assert_eq!(money(0, "EUR"), "0.00 EUR");
        assert_eq!(money(1250, "JPY"), "1250 JPY");
        assert_eq!(money(1_234_567, "BHD"), "1234.567 BHD");
        assert_eq!(money(i64::MIN, "EUR"), "-92233720368547758.08 EUR");
    }

    #[test]
    fn times_are_utc_with_the_offset_stated() {
        let time = DateTime::parse_from_rfc3339("2026-11-30T16:09:36+01:00")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(utc(time), "2026-11-30 15:09:36 UTC (+00:00)");
        assert_eq!(rfc3339(time), "2026-11-30T15:09:36.000Z");
    }
}
