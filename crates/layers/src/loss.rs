//! Cross-entropy, with PyTorch's label smoothing.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};

/// `torch.nn.functional.cross_entropy(logits, labels, label_smoothing=eps)` with mean reduction:
/// `(1 - eps) * nll + eps * mean_k(-log p_k)`, averaged over the batch.
///
/// `logits` is `(N, K)`, `labels` is `(N,)` of class indices (any integer dtype).
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use candle_core::{Device, Tensor};
/// let logits = Tensor::new(&[[0.0f32, 0.0]], &Device::Cpu)?;
/// let labels = Tensor::new(&[1u32], &Device::Cpu)?;
/// let loss = layers::loss::cross_entropy(&logits, &labels, 0.0)?.to_scalar::<f32>()?;
/// assert!((loss - 2f32.ln()).abs() < 1e-6);
/// # Ok(()) }
/// ```
///
/// # Errors
/// `label_smoothing` outside `[0, 1]`, `logits` not `(N, K)` or of no sample (PyTorch gives
/// NaN), `labels` not `(N,)`, of a float dtype (PyTorch refuses it; a cast would truncate), or
/// a label outside the classes (checked on the CPU).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&label_smoothing) {
        bail!("label smoothing must lie in [0, 1], got {label_smoothing}");
    }
    let (n, _) = logits.dims2()?;
    if labels.dtype().is_float() {
        bail!(
            "cross-entropy: labels of dtype {:?}: the labels are class indices of an integer \
             dtype (u8, u32, i64), as PyTorch's cross_entropy wants Long (a float label would \
             be truncated: labels.to_dtype(DType::U32) after checking they are whole)",
            labels.dtype()
        );
    }
    if n == 0 {
        bail!(
            "cross-entropy: an empty batch (logits of shape {:?}): the mean over no samples \
             is undefined (PyTorch gives NaN)",
            logits.dims()
        );
    }
    if labels.dims() != [n] {
        bail!(
            "cross-entropy: labels of shape {:?} for logits of shape {:?}: the labels must be \
             (N,) = ({n},), one class index per sample (squeeze an (N, 1) tensor)",
            labels.dims(),
            logits.dims()
        );
    }
    // A label outside the classes: said here on the CPU (Candle's gather names only its
    // index); on a GPU that would wait for the device every step, and the data sets' readers
    // check their labels against their classes.
    if labels.device().is_cpu() {
        let classes = logits.dim(1)?;
        let values: Vec<i64> = labels.to_dtype(DType::I64)?.to_vec1()?;
        if let Some((i, y)) = values
            .iter()
            .enumerate()
            .find(|(_, &y)| y < 0 || y as u64 >= classes as u64)
        {
            bail!(
                "cross-entropy: label {y} (sample {i}) outside the logits' {classes} classes \
                 (0 to {})",
                classes.saturating_sub(1)
            );
        }
    }
    let labels = labels.to_dtype(DType::U32)?;
    if label_smoothing == 0.0 {
        return Ok(candle_nn::loss::cross_entropy(logits, &labels)?);
    }
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = log_p.gather(&labels.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    let smooth = log_p.mean(1)?.neg()?.mean_all()?;
    Ok(((nll * (1.0 - label_smoothing))? + (smooth * label_smoothing)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn reference(logits: &[[f64; 3]], labels: &[usize], eps: f64) -> f64 {
        let mut total = 0.0;
        for (row, &y) in logits.iter().zip(labels) {
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            let logp: Vec<f64> = row.iter().map(|v| v - lse).collect();
            let uniform = -logp.iter().sum::<f64>() / 3.0;
            total += (1.0 - eps) * -logp[y] + eps * uniform;
        }
        total / labels.len() as f64
    }

    /// A label past the classes, or negative, is named with its sample, as PyTorch's
    /// `cross_entropy` refuses it ("Target 12 is out of bounds").
    #[test]
    fn a_label_outside_the_classes_is_named() -> Result<()> {
        let logits = Tensor::zeros((3, 10), DType::F32, &Device::Cpu)?;
        for (labels, said) in [
            (vec![1i64, 12, 0], "label 12 (sample 1)"),
            (vec![0, 0, -1], "label -1 (sample 2)"),
        ] {
            let labels = Tensor::new(labels.as_slice(), &Device::Cpu)?;
            for smoothing in [0.0, 0.1] {
                let err = cross_entropy(&logits, &labels, smoothing)
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(said) && err.contains("10 classes (0 to 9)"),
                    "{err}"
                );
            }
        }
        let fine = Tensor::new(&[9u32, 0, 3], &Device::Cpu)?;
        assert!(cross_entropy(&logits, &fine, 0.0).is_ok());
        Ok(())
    }

    /// Labels of another shape than (N,), such as PyTorch users' (N, 1) column, are named with
    /// their shape and the one expected.
    #[test]
    fn labels_of_another_shape_are_named_with_it() -> Result<()> {
        let logits = Tensor::zeros((2, 10), DType::F32, &Device::Cpu)?;
        let column = Tensor::new(&[[1u32], [2]], &Device::Cpu)?;
        let err = cross_entropy(&logits, &column, 0.0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("labels of shape [2, 1]") && err.contains("(N,) = (2,)"),
            "{err}"
        );
        assert!(cross_entropy(&logits, &column.squeeze(1)?, 0.0).is_ok());
        Ok(())
    }

    /// Float labels are refused, as PyTorch refuses them (they were truncated: 1.9 read as
    /// class 1, NaN as class 0), and so is an empty batch (Candle said "empty tensor for
    /// reduce").
    #[test]
    fn float_labels_and_an_empty_batch_are_refused() -> Result<()> {
        let logits = Tensor::zeros((3, 5), DType::F32, &Device::Cpu)?;
        let floats = Tensor::new(&[0.5f32, 1.9, 3.99], &Device::Cpu)?;
        let err = cross_entropy(&logits, &floats, 0.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("labels of dtype F32"), "{err}");
        let empty = Tensor::zeros((0, 5), DType::F32, &Device::Cpu)?;
        let none = Tensor::zeros(0, DType::U32, &Device::Cpu)?;
        let err = cross_entropy(&empty, &none, 0.1).unwrap_err().to_string();
        assert!(err.contains("an empty batch"), "{err}");
        Ok(())
    }

    #[test]
    fn matches_pytorch_definition_with_and_without_smoothing() -> Result<()> {
        let rows = [[1.0, -2.0, 0.5], [0.3, 0.2, 3.0]];
        let labels = [2usize, 0];
        let logits = Tensor::new(&[[1.0f32, -2.0, 0.5], [0.3, 0.2, 3.0]], &Device::Cpu)?;
        let y = Tensor::new(&[2u32, 0], &Device::Cpu)?;
        for eps in [0.0, 0.1, 0.5] {
            let got = cross_entropy(&logits, &y, eps)?.to_scalar::<f32>()? as f64;
            let want = reference(&rows, &labels, eps);
            assert!((got - want).abs() < 1e-6, "eps {eps}: {got} vs {want}");
        }
        assert!(cross_entropy(&logits, &y, 1.5).is_err());
        Ok(())
    }
}
