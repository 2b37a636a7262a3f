//! Cross-entropy and negative log-likelihood as PyTorch's `F.cross_entropy` and `F.nll_loss`
//! compute them: label smoothing, class weights, an ignored label, and the three reductions.

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
    if let Some(loss) = in_float32(logits, |l| cross_entropy(l, labels, label_smoothing))? {
        return Ok(loss);
    }
    check_smoothing(label_smoothing)?;
    check_labels(
        "cross-entropy",
        "logits",
        logits,
        labels,
        None,
        Reduction::Mean,
    )?;
    let labels = labels.to_dtype(DType::U32)?;
    let log_p = log_softmax(logits)?;
    if label_smoothing == 0.0 {
        // Candle's `nll`: the sum times -1/N.
        let n = logits.dim(0)? as f64;
        let picked = log_p.gather(&labels.unsqueeze(1)?, 1)?;
        return Ok(picked.sum_all()?.affine(-1.0 / n, 0.0)?);
    }
    let nll = log_p.gather(&labels.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    let smooth = log_p.mean(1)?.neg()?.mean_all()?;
    Ok(((nll * (1.0 - label_smoothing))? + (smooth * label_smoothing)?)?)
}

/// `F.log_softmax(xs, dim=-1)`: `xs - max - log(sum(exp(xs - max)))` along the last dimension,
/// the maximum taken out for range and, as in PyTorch's kernel, a constant to autograd
/// (Candle's `log_softmax` hands each row's largest value the rounding of the others'
/// gradients, about K ulps: 7e-5 to 6e-4 relative from PyTorch's gradient there at K = 1000;
/// a reviewer's finding). The same values as Candle's.
fn log_softmax(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let shifted = xs.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// How a loss reduces its per-sample values, as PyTorch's `reduction` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// `'mean'`: the per-sample losses summed and divided by the number of samples counted
    /// (with class weights, by the sum of the weights of their labels).
    #[default]
    Mean,
    /// `'sum'`: the per-sample losses summed.
    Sum,
    /// `'none'`: the per-sample losses, `(N,)`, 0 for ignored samples.
    None,
}

/// `torch.nn.CrossEntropyLoss` with all its options, for class-index labels: class weights
/// (`weight`, `(K,)`), a label value whose samples count for nothing (`ignore_index`, PyTorch's
/// default -100, which only signed labels can hold), the reduction and label smoothing.
/// [`cross_entropy`] is the default options' loss (what the programs train with).
///
/// Per sample `i` of label `y` (kept where `y != ignore_index`), with `w = weight` (all ones
/// without it), `log_p = log_softmax(logits)` and `eps = label_smoothing` over `K` classes:
/// `(1 - eps) * -w[y] log_p[y] + eps / K * -sum_k w[k] log_p[k]`; `Mean` divides the sum of
/// the kept samples' losses by the sum of their `w[y]`, as PyTorch does.
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use candle_core::{Device, Tensor};
/// use layers::loss::{CrossEntropyLoss, Reduction};
/// let logits = Tensor::new(&[[0.0f32, 0.0], [1.0, 0.0]], &Device::Cpu)?;
/// let labels = Tensor::new(&[1i64, -100], &Device::Cpu)?;
/// let loss = CrossEntropyLoss {
///     weight: Some(Tensor::new(&[1.0f32, 3.0], &Device::Cpu)?),
///     ..CrossEntropyLoss::default()
/// };
/// // The second sample is ignored; the first's weight divides out of the mean.
/// let value = loss.forward(&logits, &labels)?.to_scalar::<f32>()?;
/// assert!((value - 2f32.ln()).abs() < 1e-6);
/// let per_sample = CrossEntropyLoss { reduction: Reduction::None, ..loss };
/// assert_eq!(per_sample.forward(&logits, &labels)?.dims(), [2]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CrossEntropyLoss {
    /// A weight per class, `(K,)`, cast to the logits' dtype; `None` weighs every class 1.
    pub weight: Option<Tensor>,
    /// Samples with this label add nothing to the loss, its gradient, or the mean's count.
    pub ignore_index: i64,
    /// How the per-sample losses are reduced.
    pub reduction: Reduction,
    /// The share of each target spread over all classes, in `[0, 1]`.
    pub label_smoothing: f64,
}

impl Default for CrossEntropyLoss {
    /// PyTorch's defaults: no weights, `ignore_index` -100, `Mean`, no smoothing.
    fn default() -> Self {
        Self {
            weight: None,
            ignore_index: -100,
            reduction: Reduction::Mean,
            label_smoothing: 0.0,
        }
    }
}

impl CrossEntropyLoss {
    /// The loss of `logits` `(N, K)` against `labels` `(N,)` (class indices, any integer
    /// dtype): a scalar, or `(N,)` for [`Reduction::None`].
    ///
    /// An empty batch gives 0 (`Sum`) or an empty `(0,)` (`None`), as PyTorch's.
    ///
    /// # Errors
    /// What [`cross_entropy`] refuses (but an empty batch reduced otherwise than by `Mean`),
    /// logits of no class, a `weight` that is not `(K,)`, and (on the CPU, where the labels are
    /// read) a `Mean` over a batch whose every label is `ignore_index`, where PyTorch gives NaN.
    /// A weighted mean whose labels' weights sum to 0 is NaN, as PyTorch's.
    pub fn forward(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        if let Some(loss) = in_float32(logits, |l| self.forward(l, labels))? {
            return Ok(loss);
        }
        let eps = self.label_smoothing;
        check_smoothing(eps)?;
        let ignored = Some(self.ignore_index);
        let (who, reduction) = ("cross-entropy", self.reduction);
        let seen = check_labels(who, "logits", logits, labels, ignored, reduction)?;
        // The default options on labels none of which is ignored: the programs' loss itself.
        let none_ignored = seen.is_some_and(|s| s.ignored == 0);
        if self.weight.is_none() && reduction == Reduction::Mean && none_ignored {
            return cross_entropy(logits, labels, eps);
        }
        if let Some(empty) = empty_batch(logits, reduction)? {
            return Ok(empty);
        }
        let log_p = log_softmax(logits)?;
        let t = Targets::of(who, &log_p, labels, self.weight.as_ref(), self.ignore_index)?;
        // Each part reduced apart, then the two mixed, as PyTorch mixes them (a weighted mean
        // over weights summing to 0 is NaN in both parts, not an infinity).
        let nll = t.reduce(&t.kept(&t.picked(&log_p)?.neg()?)?, reduction)?;
        if eps == 0.0 {
            return Ok(nll);
        }
        let all = match &t.weight {
            Some(w) => log_p.broadcast_mul(&w.unsqueeze(0)?)?,
            None => log_p,
        };
        let smooth = t.reduce(&t.kept(&all.sum(1)?.neg()?)?, reduction)?;
        let classes = logits.dim(1)? as f64;
        Ok(((nll * (1.0 - eps))? + (smooth * (eps / classes))?)?)
    }
}

/// `torch.nn.functional.nll_loss(log_probs, labels, weight, ignore_index=ignore_index,
/// reduction=reduction)`: per sample `-weight[y] * log_probs[y]`, reduced as
/// [`CrossEntropyLoss`] says. `log_probs` is `(N, K)` (a `log_softmax`'s output), `labels`
/// `(N,)` of class indices, `weight` `(K,)`.
///
/// ```
/// # fn main() -> anyhow::Result<()> {
/// use candle_core::{Device, Tensor};
/// use layers::loss::{nll_loss, Reduction};
/// let log_probs = Tensor::new(&[[-0.5f32, -1.0], [-2.0, -0.25]], &Device::Cpu)?;
/// let labels = Tensor::new(&[1u32, 0], &Device::Cpu)?;
/// let loss = nll_loss(&log_probs, &labels, None, -100, Reduction::Sum)?;
/// assert_eq!(loss.to_scalar::<f32>()?, 3.0);
/// # Ok(()) }
/// ```
///
/// # Errors
/// As [`CrossEntropyLoss::forward`].
pub fn nll_loss(
    log_probs: &Tensor,
    labels: &Tensor,
    weight: Option<&Tensor>,
    ignore_index: i64,
    reduction: Reduction,
) -> Result<Tensor> {
    let f32_loss = |l: &Tensor| nll_loss(l, labels, weight, ignore_index, reduction);
    if let Some(loss) = in_float32(log_probs, f32_loss)? {
        return Ok(loss);
    }
    let who = "nll_loss";
    check_labels(
        who,
        "log_probs",
        log_probs,
        labels,
        Some(ignore_index),
        reduction,
    )?;
    if let Some(empty) = empty_batch(log_probs, reduction)? {
        return Ok(empty);
    }
    let t = Targets::of(who, log_probs, labels, weight, ignore_index)?;
    let per_sample = t.kept(&t.picked(log_probs)?.neg()?)?;
    t.reduce(&per_sample, reduction)
}

/// For bf16 or f16 `input`, the loss `f` computes of it in float32, handed back in the input's
/// dtype: its sums and counts in those would stop growing (a sum of ones at 256 in bf16, where
/// PyTorch's CPU kernels accumulate in float32; PyTorch rounds the log-probabilities to the
/// input's dtype on the way, so its value differs from this one by about that rounding).
/// `None` for other dtypes.
fn in_float32(input: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Option<Tensor>> {
    match input.dtype() {
        DType::BF16 | DType::F16 => Ok(Some(
            f(&input.to_dtype(DType::F32)?)?.to_dtype(input.dtype())?,
        )),
        _ => Ok(None),
    }
}

/// Label smoothing in `[0, 1]`, as PyTorch takes it.
fn check_smoothing(label_smoothing: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&label_smoothing) {
        bail!("label smoothing must lie in [0, 1], got {label_smoothing}");
    }
    Ok(())
}

/// What a loss of `input` `(0, K)` is, as PyTorch's: 0 summed, `(0,)` unreduced (a mean is
/// refused by [`check_labels`]); `None` for a batch that is not empty.
fn empty_batch(input: &Tensor, reduction: Reduction) -> Result<Option<Tensor>> {
    if input.dim(0)? > 0 {
        return Ok(None);
    }
    let (dtype, device) = (input.dtype(), input.device());
    Ok(Some(match reduction {
        Reduction::None => Tensor::zeros(0, dtype, device)?,
        _ => Tensor::zeros((), dtype, device)?,
    }))
}

/// What the CPU's labels showed ([`check_labels`]).
#[derive(Debug, Clone, Copy)]
struct Seen {
    ignored: usize,
}

/// Refuses labels that are not `(N,)` class indices for `input` `(N, K)` (named `what`), input
/// of no class, a mean over an empty batch, and (on the CPU, where reading them costs nothing) a label outside the classes
/// other than `ignore_index`, or a mean over ignored labels only. `None` where the labels are
/// on a device (reading them there would wait for it every step; the data sets' readers check
/// their labels against their classes).
fn check_labels(
    who: &str,
    what: &str,
    input: &Tensor,
    labels: &Tensor,
    ignore_index: Option<i64>,
    reduction: Reduction,
) -> Result<Option<Seen>> {
    let (n, classes) = match *input.dims() {
        [n, k] => (n, k),
        ref dims => bail!("{who}: {what} of shape {dims:?}, where (N, K) is wanted"),
    };
    if labels.dtype().is_float() {
        bail!(
            "{who}: labels of dtype {:?}: the labels are class indices of an integer \
             dtype (u8, u32, i64), as PyTorch's {} wants Long (a float label would \
             be truncated: labels.to_dtype(DType::U32) after checking they are whole)",
            labels.dtype(),
            who.replace('-', "_")
        );
    }
    if classes == 0 {
        bail!(
            "{who}: {what} of shape {:?} hold no class (K = 0)",
            input.dims()
        );
    }
    if n == 0 && reduction == Reduction::Mean {
        bail!(
            "{who}: an empty batch ({what} of shape {:?}): the mean over no samples \
             is undefined (PyTorch gives NaN)",
            input.dims()
        );
    }
    if labels.dims() != [n] {
        bail!(
            "{who}: labels of shape {:?} for {what} of shape {:?}: the labels must be \
             (N,) = ({n},), one class index per sample (squeeze an (N, 1) tensor)",
            labels.dims(),
            input.dims()
        );
    }
    if !labels.device().is_cpu() {
        return Ok(None);
    }
    let values: Vec<i64> = labels.to_dtype(DType::I64)?.to_vec1()?;
    let ignored = values.iter().filter(|&&y| Some(y) == ignore_index).count();
    if let Some((i, y)) = values
        .iter()
        .enumerate()
        .find(|(_, &y)| Some(y) != ignore_index && (y < 0 || y as u64 >= classes as u64))
    {
        bail!(
            "{who}: label {y} (sample {i}) outside the {what}' {classes} classes (0 to {}{})",
            classes.saturating_sub(1),
            ignore_index.map_or(String::new(), |v| format!(", or {v} to ignore the sample"))
        );
    }
    if ignored == n && reduction == Reduction::Mean {
        bail!(
            "{who}: every one of the {n} labels is ignore_index {}: the mean over no samples \
             is undefined (PyTorch gives NaN)",
            ignore_index.unwrap_or_default()
        );
    }
    Ok(Some(Seen { ignored }))
}

/// The labels as indices and weights, ignored samples set apart.
struct Targets {
    /// `(N,)` u32: the label, or 0 where ignored (a valid index, its value then discarded).
    index: Tensor,
    /// `(N,)` u8: 1 where the sample counts.
    kept: Tensor,
    /// The class weights, `(K,)`, in the input's dtype.
    weight: Option<Tensor>,
    /// `(N,)`: each kept sample's label's weight (1 without weights), 0 where ignored.
    weight_y: Tensor,
}

impl Targets {
    fn of(
        who: &str,
        input: &Tensor,
        labels: &Tensor,
        weight: Option<&Tensor>,
        ignore_index: i64,
    ) -> Result<Self> {
        let (_, classes) = input.dims2()?;
        let weight = match weight {
            Some(w) if w.dims() != [classes] => bail!(
                "{who}: a class weight of shape {:?} for {classes} classes: one weight per \
                 class, ({classes},), is wanted",
                w.dims()
            ),
            Some(w) => Some(w.to_dtype(input.dtype())?.to_device(input.device())?),
            None => None,
        };
        let labels = labels.to_dtype(DType::I64)?;
        let kept = labels.ne(ignore_index)?;
        let index = kept
            .where_cond(&labels, &labels.zeros_like()?)?
            .to_dtype(DType::U32)?;
        let ones = Tensor::ones(labels.dims(), input.dtype(), input.device())?;
        let weight_y = match &weight {
            Some(w) => w.index_select(&index, 0)?,
            None => ones,
        };
        let weight_y = kept.where_cond(&weight_y, &weight_y.zeros_like()?)?;
        Ok(Self {
            index,
            kept,
            weight,
            weight_y,
        })
    }

    /// `input[i, y_i]` times the label's weight, `(N,)`.
    fn picked(&self, input: &Tensor) -> Result<Tensor> {
        let picked = input.gather(&self.index.unsqueeze(1)?, 1)?.squeeze(1)?;
        Ok(match &self.weight {
            Some(_) => (picked * &self.weight_y)?,
            None => picked,
        })
    }

    /// `per_sample` where the sample counts, else 0 (a product would turn an ignored sample's
    /// infinite log-probability into NaN).
    fn kept(&self, per_sample: &Tensor) -> Result<Tensor> {
        Ok(self
            .kept
            .where_cond(per_sample, &per_sample.zeros_like()?)?)
    }

    fn reduce(&self, per_sample: &Tensor, reduction: Reduction) -> Result<Tensor> {
        Ok(match reduction {
            Reduction::None => per_sample.clone(),
            Reduction::Sum => per_sample.sum_all()?,
            Reduction::Mean => per_sample.sum_all()?.div(&self.weight_y.sum_all()?)?,
        })
    }
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

    /// The logits and labels of `pytorch_options_case` (`F.cross_entropy` on the same
    /// numbers, PyTorch 2.15): `2 sin(5i + k + 1)` for 7 samples of 5 classes, two ignored.
    fn options_case() -> Result<(candle_core::Var, Tensor, Tensor)> {
        let rows: Vec<f32> = (0..7)
            .flat_map(|i| (0..5).map(move |k| 2.0 * ((i * 5 + k + 1) as f64).sin()))
            .map(|v| v as f32)
            .collect();
        let logits = candle_core::Var::from_tensor(&Tensor::from_vec(rows, (7, 5), &Device::Cpu)?)?;
        let labels = Tensor::new(&[1i64, 4, -100, 0, 2, -100, 3], &Device::Cpu)?;
        let weight = Tensor::new(&[0.5f32, 1.0, 2.0, 0.25, 3.0], &Device::Cpu)?;
        Ok((logits, labels, weight))
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            let tol = 2e-6 * w.abs().max(1.0);
            assert!(
                (*g as f64 - w).abs() <= tol,
                "{what}: {got:?} against {want:?}"
            );
        }
    }

    /// A reduction, a smoothing, whether weighted, PyTorch's loss and its first gradients.
    type Case = (Reduction, f64, bool, &'static [f64], [f64; 10]);

    /// Every reduction, with and without weights and smoothing, against PyTorch's
    /// `F.cross_entropy(logits, labels, weight, ignore_index=-100, reduction, label_smoothing)`:
    /// the loss and the first two samples' gradients of its sum.
    #[test]
    fn cross_entropy_options_match_pytorch() -> Result<()> {
        let (logits, labels, weight) = options_case()?;
        #[rustfmt::skip]
        let cases: [Case; 12] = [
            (Reduction::Mean, 0.0, false, &[2.50112247467041], [0.0813036784529686, -0.1068841814994812, 0.02003517374396324, 0.0033255808521062136, 0.002219763118773699, 0.008086913265287876, 0.052617646753787994, 0.10228824615478516, 0.032243456691503525, -0.19523625075817108]),
            (Reduction::Mean, 0.0, true, &[3.1298828125], [0.06022494286298752, -0.07917346805334091, 0.0148408692330122, 0.002463393146172166, 0.0016442688647657633, 0.017970917746424675, 0.1169281005859375, 0.22730721533298492, 0.0716521292924881, -0.43385833501815796]),
            (Reduction::Mean, 0.2, false, &[2.47129225730896], [0.07330367714166641, -0.07488417625427246, 0.012035174295306206, -0.004674418363720179, -0.005780236329883337, 8.69131472427398e-05, 0.04461764171719551, 0.09428823739290237, 0.02424345538020134, -0.16323624551296234]),
            (Reduction::Mean, 0.2, true, &[2.997123956680298], [0.06147772818803787, -0.050641536712646484, 0.004027878399938345, 0.0011543493019416928, -0.01601841114461422, 0.013031153939664364, 0.09814008325338364, 0.19045156240463257, 0.06228891387581825, -0.3639116883277893]),
            (Reduction::Sum, 0.0, false, &[12.50561237335205], [0.4065183699131012, -0.534420907497406, 0.10017586499452591, 0.016627904027700424, 0.011098815128207207, 0.040434565395116806, 0.2630882263183594, 0.5114412307739258, 0.16121728718280792, -0.9761812090873718]),
            (Reduction::Sum, 0.0, true, &[21.126708984375], [0.4065183699131012, -0.534420907497406, 0.10017586499452591, 0.016627904027700424, 0.011098815128207207, 0.12130369246006012, 0.7892646789550781, 1.5343236923217773, 0.48365187644958496, -2.92854380607605]),
            (Reduction::Sum, 0.2, false, &[12.356460571289062], [0.36651840806007385, -0.3744208812713623, 0.060175877064466476, -0.023372093215584755, -0.028901182115077972, 0.00043456628918647766, 0.22308823466300964, 0.47144123911857605, 0.1212172880768776, -0.8161812424659729]),
            (Reduction::Sum, 0.2, true, &[20.230587005615234], [0.4149746298789978, -0.34183043241500854, 0.027188170701265335, 0.007791856303811073, -0.1081242635846138, 0.08796029537916183, 0.662445604801178, 1.2855480909347534, 0.4204501807689667, -2.456403970718384]),
            (Reduction::None, 0.0, false, &[0.7644732594490051, 3.737281322479248, 0.0, 2.714576244354248, 3.6975910663604736, 0.0, 1.5916906595230103], [0.4065183699131012, -0.534420907497406, 0.10017586499452591, 0.016627904027700424, 0.011098815128207207, 0.040434565395116806, 0.2630882263183594, 0.5114412307739258, 0.16121728718280792, -0.9761812090873718]),
            (Reduction::None, 0.0, true, &[0.7644732594490051, 11.211843490600586, 0.0, 1.357288122177124, 7.395182132720947, 0.0, 0.39792266488075256], [0.4065183699131012, -0.534420907497406, 0.10017586499452591, 0.016627904027700424, 0.011098815128207207, 0.12130369246006012, 0.7892646789550781, 1.5343236923217773, 0.48365187644958496, -2.92854380607605]),
            (Reduction::None, 0.2, false, &[1.1140992641448975, 3.420870780944824, 0.0, 2.674412250518799, 3.443610668182373, 0.0, 1.703467607498169], [0.36651840806007385, -0.3744208812713623, 0.060175877064466476, -0.023372093215584755, -0.028901182115077972, 0.00043456628918647766, 0.22308823466300964, 0.47144123911857605, 0.1212172880768776, -0.8161812424659729]),
            (Reduction::None, 0.2, true, &[1.4253029823303223, 9.607412338256836, 0.0, 1.6497797966003418, 6.610049247741699, 0.0, 0.9380428791046143], [0.4149746298789978, -0.34183043241500854, 0.027188170701265335, 0.007791856303811073, -0.1081242635846138, 0.08796029537916183, 0.662445604801178, 1.2855480909347534, 0.4204501807689667, -2.456403970718384]),
        ];
        for (reduction, label_smoothing, weighted, want, want_grad) in cases {
            let what = format!("{reduction:?}, smoothing {label_smoothing}, weighted {weighted}");
            let loss = CrossEntropyLoss {
                weight: weighted.then(|| weight.clone()),
                ignore_index: -100,
                reduction,
                label_smoothing,
            };
            let value = loss.forward(logits.as_tensor(), &labels)?;
            assert_close(&value.flatten_all()?.to_vec1::<f32>()?, want, &what);
            let grads = value.sum_all()?.backward()?;
            let grad = grads.get(logits.as_tensor()).expect("a gradient");
            let grad = grad.flatten_all()?.to_vec1::<f32>()?;
            assert_close(&grad[..10], &want_grad, &what);
            // The ignored samples get no gradient.
            assert!(
                grad[10..15].iter().chain(&grad[25..30]).all(|&g| g == 0.0),
                "{what}"
            );
        }
        Ok(())
    }

    /// `nll_loss` of the log-probabilities is the weighted cross-entropy (PyTorch's 3.1298828
    /// for `options_case`); the defaults' `CrossEntropyLoss` is `cross_entropy` bit for bit
    /// where nothing is ignored, and an ignored sample of an infinite logit stays out of it.
    #[test]
    fn nll_loss_and_the_default_options_agree_with_cross_entropy() -> Result<()> {
        let (logits, labels, weight) = options_case()?;
        let log_p = log_softmax(logits.as_tensor())?;
        let nll = nll_loss(&log_p, &labels, Some(&weight), -100, Reduction::Mean)?;
        assert_close(&[nll.to_scalar::<f32>()?], &[3.1298828125], "nll_loss");
        let all = Tensor::new(&[1u32, 4, 2, 0, 2, 1, 3], &Device::Cpu)?;
        for eps in [0.0, 0.1] {
            let loss = CrossEntropyLoss {
                label_smoothing: eps,
                ..CrossEntropyLoss::default()
            };
            let ours = loss.forward(logits.as_tensor(), &all)?.to_scalar::<f32>()?;
            let plain = cross_entropy(logits.as_tensor(), &all, eps)?.to_scalar::<f32>()?;
            assert_eq!(ours.to_bits(), plain.to_bits(), "smoothing {eps}");
            // The general path (class weights of one, which CUDA's labels take too) agrees.
            let ones = CrossEntropyLoss {
                weight: Some(Tensor::ones(5, DType::F32, &Device::Cpu)?),
                ..loss
            };
            let general = ones.forward(logits.as_tensor(), &all)?.to_scalar::<f32>()?;
            assert!(
                (general - plain).abs() <= 2e-7 * plain.abs(),
                "{general} against {plain}"
            );
        }
        // bf16 logits: computed in float32 (a bf16 sum of a thousand losses stalled at 256 a
        // term; a reviewer's finding), handed back in bf16.
        let many = Tensor::randn(0f32, 1.0, (1000, 10), &Device::Cpu)?;
        let labels: Vec<u32> = (0..1000).map(|i| i % 10).collect();
        let labels = Tensor::new(labels.as_slice(), &Device::Cpu)?;
        for reduction in [Reduction::Mean, Reduction::Sum] {
            let loss = CrossEntropyLoss {
                reduction,
                weight: Some(Tensor::ones(10, DType::F32, &Device::Cpu)?),
                ..CrossEntropyLoss::default()
            };
            let f32s = loss.forward(&many, &labels)?.to_scalar::<f32>()?;
            let half = loss.forward(&many.to_dtype(DType::BF16)?, &labels)?;
            assert_eq!(half.dtype(), DType::BF16);
            let half = half.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            assert!(
                (half - f32s).abs() <= 2e-2 * f32s,
                "{reduction:?}: {half} against {f32s}"
            );
        }
        let plain = cross_entropy(&many.to_dtype(DType::BF16)?, &labels, 0.0)?;
        let want = cross_entropy(&many, &labels, 0.0)?.to_scalar::<f32>()?;
        let got = plain.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        assert!((got - want).abs() <= 1e-2 * want, "{got} against {want}");
        let inf = Tensor::new(&[[0.0f32, f32::NEG_INFINITY], [1.0, 2.0]], &Device::Cpu)?;
        let labels = Tensor::new(&[-100i64, 0], &Device::Cpu)?;
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let loss = CrossEntropyLoss {
                reduction,
                label_smoothing: 0.1,
                ..CrossEntropyLoss::default()
            };
            let values = loss
                .forward(&inf, &labels)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{reduction:?}: {values:?}"
            );
        }
        Ok(())
    }

    /// The gradient at each row's largest logit is PyTorch's (`F.cross_entropy` of 1,000 logits
    /// `0.3 sin(0.7 k)`, label 0, PyTorch 2.15: the largest at 92) within 5e-6 (PyTorch's own
    /// is 3.3e-6 from the exact value with smoothing 1), where Candle's `log_softmax` gave 7e-5
    /// to 6e-4; within 1e-6 at every other logit.
    #[test]
    fn the_largest_logits_gradient_is_pytorchs() -> Result<()> {
        let values: Vec<f32> = (0..1000)
            .map(|k| (0.3 * (0.7 * k as f64).sin()) as f32)
            .collect();
        let logits =
            candle_core::Var::from_tensor(&Tensor::from_vec(values, (1, 1000), &Device::Cpu)?)?;
        let label = Tensor::new(&[0u32], &Device::Cpu)?;
        for (eps, at_92, at_0) in [
            (0.0, 0.0013191032921895385, -0.9990227818489075),
            (0.1, 0.0012191045098006725, -0.8991227746009827),
            (1.0, 0.0003191021387465298, -2.2783875465393066e-05),
        ] {
            let grads = cross_entropy(logits.as_tensor(), &label, eps)?.backward()?;
            let grad = grads
                .get(logits.as_tensor())
                .expect("a gradient")
                .to_vec2::<f32>()?;
            for (got, want, tol) in [(grad[0][92], at_92, 5e-6), (grad[0][0], at_0, 1e-6)] {
                let close = (f64::from(got) - want).abs() <= tol * f64::abs(want) + 1e-9;
                assert!(close, "smoothing {eps}: {got} against PyTorch's {want}");
            }
        }
        Ok(())
    }

    /// A weighted mean over labels whose weights sum to 0 is NaN with smoothing too (PyTorch
    /// reduces the two parts apart; one division gave an infinity), and an empty batch gives
    /// PyTorch's 0 summed and empty `(0,)` unreduced.
    #[test]
    fn zero_weights_and_empty_batches_give_pytorchs_values() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32, 0.0, 1.0], [0.0, 2.0, 0.0]], &dev)?;
        let loss = CrossEntropyLoss {
            weight: Some(Tensor::new(&[0.0f32, 2.0, 3.0], &dev)?),
            label_smoothing: 0.2,
            ..CrossEntropyLoss::default()
        };
        let labels = Tensor::new(&[0i64, 0], &dev)?;
        assert!(loss.forward(&logits, &labels)?.to_scalar::<f32>()?.is_nan());
        let empty = Tensor::zeros((0, 3), DType::F32, &dev)?;
        let none = Tensor::zeros(0, DType::I64, &dev)?;
        for reduction in [Reduction::Sum, Reduction::None] {
            let loss = CrossEntropyLoss {
                reduction,
                label_smoothing: 0.1,
                ..CrossEntropyLoss::default()
            };
            let value = loss.forward(&empty, &none)?;
            assert_eq!(
                value.flatten_all()?.to_vec1::<f32>()?.len(),
                usize::from(reduction == Reduction::Sum)
            );
            let nll = nll_loss(&empty, &none, None, -100, reduction)?;
            assert_eq!(nll.dims(), value.dims());
        }
        let err = CrossEntropyLoss::default()
            .forward(&empty, &none)
            .unwrap_err();
        assert!(err.to_string().contains("an empty batch"), "{err}");
        let classless = Tensor::zeros((2, 0), DType::F32, &dev)?;
        let err = nll_loss(&classless, &labels, None, 0, Reduction::Sum).unwrap_err();
        assert!(err.to_string().contains("hold no class (K = 0)"), "{err}");
        Ok(())
    }

    /// A mean over ignored labels only (PyTorch's NaN), a weight of the wrong length and a
    /// label outside the classes other than `ignore_index` are named.
    #[test]
    fn bad_options_are_named() -> Result<()> {
        let (logits, _, weight) = options_case()?;
        let logits = logits.as_tensor();
        let ignored = Tensor::new(&[-100i64; 7], &Device::Cpu)?;
        let err = CrossEntropyLoss::default()
            .forward(logits, &ignored)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("every one of the 7 labels is ignore_index -100"),
            "{err}"
        );
        let summed = CrossEntropyLoss {
            reduction: Reduction::Sum,
            ..CrossEntropyLoss::default()
        };
        assert_eq!(summed.forward(logits, &ignored)?.to_scalar::<f32>()?, 0.0);
        let short = CrossEntropyLoss {
            weight: Some(weight.narrow(0, 0, 4)?),
            ..CrossEntropyLoss::default()
        };
        let labels = Tensor::new(&[0i64, 1, 2, 3, 4, 0, 1], &Device::Cpu)?;
        let err = short.forward(logits, &labels).unwrap_err().to_string();
        assert!(
            err.contains("a class weight of shape [4] for 5 classes"),
            "{err}"
        );
        let bad = Tensor::new(&[0i64, 1, 2, -1, 4, 0, 1], &Device::Cpu)?;
        let err = CrossEntropyLoss::default()
            .forward(logits, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("label -1 (sample 3)") && err.contains("or -100 to ignore"),
            "{err}"
        );
        Ok(())
    }
}
