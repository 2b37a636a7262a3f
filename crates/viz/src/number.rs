//! Number formatting: compact for values printed inside matrix cells, precise for terminals.

/// Formats `v` compactly: integers without decimals (`3`, `-12`), other values with at most
/// two decimals and no trailing zeros (`0.5`, `-1.25`), one decimal from 100 on (`123.4`),
/// none from 10 000 on, and a short exponent form for tiny non-zero values (`1e-3`).
pub fn format_value(v: f32) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let magnitude = v.abs();
    if v.fract() == 0.0 || magnitude >= 10_000.0 {
        return format!("{:.0}", v + 0.0);
    }
    let decimals = if magnitude >= 100.0 { 1 } else { 2 };
    let fixed = format!("{v:.decimals$}");
    let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
    if trimmed == "0" || trimmed == "-0" {
        format!("{v:.0e}")
    } else {
        trimmed.to_string()
    }
}

/// Formats `v` for a terminal to four decimals, as PyTorch prints a tensor's values, with no
/// trailing zeros: integers without decimals (`3`), fractions to four decimals (`0.125`,
/// `6.625`, `0.3333`), two from 1 000 on and none from 100 000 on, and an exponent form with
/// four significant digits where four decimals would lose them or the digits would run long:
/// non-zero values below 0.001 (`1.234e-4`, `1.5e-6`) and values from 1e8 on (`1e20`,
/// `-2.5e9`). Each value on its own: PyTorch switches a whole tensor to its exponent form
/// (`1.2345e-04`) when a value is below 1e-4 or above 1e8, or they span more than 1000x.
pub fn format_value_precisely(v: f32) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let magnitude = v.abs();
    if (magnitude < 1e-3 && magnitude > 0.0) || magnitude >= 1e8 {
        let text = format!("{v:.3e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exponent}");
    }
    if v.fract() == 0.0 || magnitude >= 100_000.0 {
        return format!("{:.0}", v + 0.0);
    }
    let decimals = if magnitude >= 1_000.0 { 2 } else { 4 };
    let fixed = format!("{v:.decimals$}");
    fixed
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::{format_value, format_value_precisely};

    #[test]
    fn precisely_to_four_decimals() {
        for (v, text) in [
            (3.0, "3"),
            (-0.0, "0"),
            (0.125, "0.125"),
            (6.625, "6.625"),
            (0.0635, "0.0635"),
            (1.0 / 3.0, "0.3333"),
            (-2.5, "-2.5"),
            (1234.567, "1234.57"),
            (123456.7, "123457"),
            (0.0000015, "1.5e-6"),
            (-0.00001234, "-1.234e-5"),
            (0.00012345, "1.234e-4"),
            (0.0005, "5e-4"),
            (0.001, "0.001"),
            (1e20, "1e20"),
            (-2.5e9, "-2.5e9"),
            (12_345_678.0, "12345678"),
            (99_999_992.0, "99999992"),
            (99_999_999.0, "1e8"),
            (f32::NAN, "NaN"),
        ] {
            assert_eq!(format_value_precisely(v), text, "{v}");
        }
    }

    #[test]
    fn integers_have_no_decimals() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(-12.0), "-12");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(-0.0), "0");
        assert_eq!(format_value(123456.0), "123456");
    }

    #[test]
    fn fractions_use_at_most_two_decimals() {
        assert_eq!(format_value(0.5), "0.5");
        assert_eq!(format_value(-1.25), "-1.25");
        assert_eq!(format_value(1.0 / 3.0), "0.33");
        assert_eq!(format_value(2.999), "3");
        assert_eq!(format_value(123.46), "123.5");
        assert_eq!(format_value(12345.6), "12346");
    }

    #[test]
    fn tiny_and_special_values() {
        assert_eq!(format_value(0.001), "1e-3");
        assert_eq!(format_value(-0.004), "-4e-3");
        assert_eq!(format_value(f32::NAN), "NaN");
        assert_eq!(format_value(f32::INFINITY), "inf");
    }
}
