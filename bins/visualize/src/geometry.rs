//! The output-size rule of convolution and pooling, with its arithmetic spelled out.

use anyhow::{ensure, Result};

/// One side of a sliding window: input size `n`, kernel `k`, stride `s`, padding `p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRule {
    /// Input size along this side.
    pub n: usize,
    /// Kernel size along this side.
    pub k: usize,
    /// Stride.
    pub s: usize,
    /// Zero padding on each end.
    pub p: usize,
}

impl SizeRule {
    /// `(n + 2p - k) / s + 1` (floor division); errors when the kernel does not fit the padded
    /// input or the stride is zero. `side` names the dimension in errors ("height").
    pub fn output(&self, side: &str) -> Result<usize> {
        ensure!(self.s > 0, "the stride must be at least 1");
        ensure!(self.k > 0, "the kernel must be at least 1 wide");
        let padded = self.n + 2 * self.p;
        ensure!(
            self.k <= padded,
            "the kernel {side} {} is larger than the padded input {side} {} ({} + 2*{})",
            self.k,
            padded,
            self.n,
            self.p
        );
        Ok((padded - self.k) / self.s + 1)
    }

    /// The rule with the numbers: `(5 + 2*0 - 3) / 1 + 1 = 3`.
    pub fn explain(&self, side: &str) -> Result<String> {
        let out = self.output(side)?;
        Ok(format!(
            "({} + 2*{} - {}) / {} + 1 = {out}",
            self.n, self.p, self.k, self.s
        ))
    }
}

/// The rule for both sides of a window over a `rows x cols` input, as printed lines:
/// the formula, then the height and the width with their numbers.
pub fn explain_sizes(height: SizeRule, width: SizeRule) -> Result<String> {
    Ok(format!(
        "output size: (H + 2p - k) / s + 1 (floor division)\n  height: {}\n  width:  {}",
        height.explain("height")?,
        width.explain("width")?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tutorial_numbers() -> Result<()> {
        let conv = SizeRule {
            n: 5,
            k: 3,
            s: 1,
            p: 0,
        };
        assert_eq!(conv.explain("height")?, "(5 + 2*0 - 3) / 1 + 1 = 3");
        let strided = SizeRule { s: 2, p: 1, ..conv };
        assert_eq!(strided.output("height")?, 3);
        let pool = SizeRule {
            n: 4,
            k: 2,
            s: 2,
            p: 0,
        };
        assert_eq!(pool.output("width")?, 2);
        let floor = SizeRule { n: 7, ..pool };
        assert_eq!(floor.explain("width")?, "(7 + 2*0 - 2) / 2 + 1 = 3");
        Ok(())
    }

    #[test]
    fn kernel_larger_than_padded_input_is_refused() {
        let rule = SizeRule {
            n: 2,
            k: 5,
            s: 1,
            p: 1,
        };
        let err = rule.output("width").unwrap_err().to_string();
        assert_eq!(
            err,
            "the kernel width 5 is larger than the padded input width 4 (2 + 2*1)"
        );
        assert!(SizeRule { s: 0, ..rule }.output("width").is_err());
    }
}
