//! Small dense matrices given on the command line: parsing, printing, tensors.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};

/// A row-major matrix of `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub values: Vec<f32>,
}

impl Matrix {
    /// A matrix from its rows; errors when they are empty or ragged.
    pub fn from_rows(rows: &[Vec<f32>]) -> Result<Matrix> {
        let cols = rows.first().map_or(0, Vec::len);
        ensure!(cols > 0, "the matrix is empty");
        if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != cols) {
            bail!(
                "ragged matrix: row 1 has {cols} values but row {} has {}",
                i + 1,
                row.len()
            );
        }
        Ok(Matrix {
            rows: rows.len(),
            cols,
            values: rows.concat(),
        })
    }

    /// Parses `text`: rows separated by `;` or new lines, values by `,` or white space
    /// (`"1,0,1;0,1,0;1,0,1"`, or one row per line of a file). Blank rows are ignored.
    pub fn parse(text: &str) -> Result<Matrix> {
        let mut rows = Vec::new();
        for line in text.split(['\n', ';']) {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            // Between commas a value must stand ("1,,2" and "1,2," are refused, not read as
            // shorter rows).
            if line.split(',').any(|cell| cell.trim().is_empty()) {
                bail!(
                    "row {} ({line:?}) has an empty value between commas",
                    rows.len() + 1
                );
            }
            let row = line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|v| !v.is_empty())
                .map(|v| {
                    let row = rows.len() + 1;
                    match v.parse::<f32>() {
                        Ok(x) if x.is_finite() => Ok(x),
                        Ok(_) => bail!(
                            "{v:?} in row {row} is not a finite number (NaN, infinite, or beyond \
                             float32's range)"
                        ),
                        Err(_) => bail!("{v:?} in row {row} is not a number"),
                    }
                })
                .collect::<Result<Vec<f32>>>()?;
            rows.push(row);
        }
        Matrix::from_rows(&rows)
    }

    /// Parses an inline matrix, or the file `path` when `arg` is `@path`.
    pub fn from_arg(arg: &str) -> Result<Matrix> {
        match arg.strip_prefix('@') {
            Some(path) => Matrix::from_file(Path::new(path)),
            None => Matrix::parse(arg).with_context(|| format!("cannot read matrix {arg:?}")),
        }
    }

    /// The matrix given by a file option or else an inline/`@file` option; `None` when neither
    /// is given.
    pub fn from_options(inline: Option<&str>, file: Option<&Path>) -> Result<Option<Matrix>> {
        match (inline, file) {
            (_, Some(path)) => Matrix::from_file(path).map(Some),
            (Some(arg), None) => Matrix::from_arg(arg).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Reads and parses a matrix file: a regular file or a pipe (`--input-file <(cmd)`), as an
    /// image is read (`datasets::read_input_file`: a device or a directory is refused, named).
    pub fn from_file(path: &Path) -> Result<Matrix> {
        let bytes = datasets::read_input_file(path, "matrix")?;
        let text = String::from_utf8(bytes)
            .with_context(|| format!("matrix file {} is not UTF-8 text", path.display()))?;
        // A byte-order mark (some editors write one) is no value.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        Matrix::parse(text).with_context(|| format!("bad matrix in {}", path.display()))
    }

    /// The square matrix `1, 2, ..., side * side`, row by row.
    pub fn counting(side: usize) -> Matrix {
        Matrix {
            rows: side,
            cols: side,
            values: (1..=side * side).map(|v| v as f32).collect(),
        }
    }

    /// The matrix as a `(1, 1, rows, cols)` tensor, a one-image one-channel batch.
    pub fn to_batch(&self) -> Result<Tensor> {
        Tensor::from_vec(
            self.values.clone(),
            (1, 1, self.rows, self.cols),
            &Device::Cpu,
        )
        .context("cannot make a tensor of the matrix")
    }

    /// The matrix of a tensor whose dimensions are all 1 but the last two.
    pub fn from_tensor(t: &Tensor) -> Result<Matrix> {
        let dims = t.dims();
        ensure!(
            dims.len() >= 2 && dims[..dims.len() - 2].iter().all(|&d| d == 1),
            "expected a single matrix, got shape {dims:?}"
        );
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        Ok(Matrix {
            rows: dims[dims.len() - 2],
            cols: dims[dims.len() - 1],
            values,
        })
    }

    /// Refuses a result that holds an infinite (or NaN) value, named `what`, with its place:
    /// nothing non-finite is printed as a result or drawn.
    ///
    /// # Errors
    /// The first non-finite value, its row and column (from 1).
    pub fn check_finite(&self, what: &str) -> Result<()> {
        match self.values.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => anyhow::bail!(
                "{what} overflows float32: {} at row {}, column {} (values beyond ±3.4e38 are \
                 infinite, as in PyTorch's float32); give smaller values",
                self.values[i],
                i / self.cols + 1,
                i % self.cols + 1
            ),
        }
    }

    /// The matrix with `padding` zeros on every side.
    pub fn padded(&self, padding: usize) -> Matrix {
        let cols = self.cols + 2 * padding;
        let mut values = vec![0.0; (self.rows + 2 * padding) * cols];
        for (r, row) in self.values.chunks(self.cols).enumerate() {
            let start = (r + padding) * cols + padding;
            values[start..start + self.cols].copy_from_slice(row);
        }
        Matrix {
            rows: self.rows + 2 * padding,
            cols,
            values,
        }
    }

    /// A titled panel for [`viz::save_panels`].
    pub fn panel(&self, title: &str) -> viz::Panel {
        viz::Panel {
            title: title.to_string(),
            rows: self.rows,
            cols: self.cols,
            values: self.values.clone(),
        }
    }
}

/// The context of a matrix option's error: `bad --input`, or `bad --input-file` when the file
/// option gave it.
pub fn bad_option(flag: &str, from_file: bool) -> String {
    match from_file {
        true => format!("bad {flag}-file"),
        false => format!("bad {flag}"),
    }
}

impl std::fmt::Display for Matrix {
    /// Nested lists, one row a line, columns right-aligned: `[[4, 2, 2],\n [1, 4, 2], ...]`
    /// (values to four decimals, as PyTorch prints them, without trailing zeros).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cells: Vec<String> = self
            .values
            .iter()
            .map(|&v| viz::format_value_precisely(v))
            .collect();
        let width = cells.iter().map(String::len).max().unwrap_or(0);
        for (r, row) in cells.chunks(self.cols).enumerate() {
            let open = if r == 0 { "[[" } else { " [" };
            let close = if r + 1 == self.rows { "]]" } else { "]," };
            let row: Vec<String> = row.iter().map(|c| format!("{c:>width$}")).collect();
            write!(f, "{open}{}{close}", row.join(", "))?;
            if r + 1 < self.rows {
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that starts with a byte-order mark (as some editors save text) reads as without.
    #[test]
    fn a_byte_order_mark_is_no_value() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("m.txt");
        std::fs::write(&path, "\u{feff}1 2\n3 4\n")?;
        assert_eq!(Matrix::from_file(&path)?.values, [1.0, 2.0, 3.0, 4.0]);
        Ok(())
    }

    #[test]
    fn parses_inline_and_multiline_text() -> Result<()> {
        let inline = Matrix::parse("1,0,1;0,1,0;1,0,1")?;
        assert_eq!((inline.rows, inline.cols), (3, 3));
        assert_eq!(inline.values, [1., 0., 1., 0., 1., 0., 1., 0., 1.]);
        let lines = Matrix::parse("1 0 1\n0, 1, 0\n\n1\t0 1\n")?;
        assert_eq!(lines, inline);
        for bad in ["1,,2;3,4,5", "1,2,;3,4,5", ",1"] {
            let err = format!("{:#}", Matrix::parse(bad).unwrap_err());
            assert!(err.contains("empty value between commas"), "{bad}: {err}");
        }
        let decimals = Matrix::parse("-1.5, 2e1")?;
        assert_eq!(decimals.values, [-1.5, 20.0]);
        Ok(())
    }

    #[test]
    fn bad_text_is_a_clear_error() {
        let ragged = Matrix::parse("1,2,3;4,5").unwrap_err().to_string();
        assert!(ragged.contains("row 2 has 2"), "{ragged}");
        let word = Matrix::parse("1,x;2,3").unwrap_err().to_string();
        assert!(word.contains("\"x\" in row 1"), "{word}");
        let nan = Matrix::parse("1,NaN").unwrap_err().to_string();
        assert!(nan.contains("not a finite number"), "{nan}");
        assert!(Matrix::parse(" ; \n").is_err());
        let file = Matrix::from_arg("@/nonexistent/kernel.txt")
            .unwrap_err()
            .to_string();
        assert!(file.contains("/nonexistent/kernel.txt"), "{file}");
    }

    #[test]
    fn reads_a_matrix_file() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("k.txt");
        std::fs::write(&path, "1 2\n3 4\n")?;
        let m = Matrix::from_arg(&format!("@{}", path.display()))?;
        assert_eq!(m.values, [1., 2., 3., 4.]);
        Ok(())
    }

    #[test]
    fn prints_aligned_nested_lists() {
        let m = Matrix {
            rows: 2,
            cols: 2,
            values: vec![3.5, 5.5, 11.5, 13.5],
        };
        assert_eq!(m.to_string(), "[[ 3.5,  5.5],\n [11.5, 13.5]]");
        assert_eq!(Matrix::counting(2).to_string(), "[[1, 2],\n [3, 4]]");
    }

    #[test]
    fn pads_with_zeros() {
        let p = Matrix::counting(2).padded(1);
        assert_eq!((p.rows, p.cols), (4, 4));
        assert_eq!(
            p.values,
            [0., 0., 0., 0., 0., 1., 2., 0., 0., 3., 4., 0., 0., 0., 0., 0.]
        );
    }
}
