//! Compact number formatting for values printed inside matrix cells.

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

#[cfg(test)]
mod tests {
    use super::format_value;

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
