//! A fixed part of a data set: `torch.utils.data.Subset`, and the seeded stratified choice
//! (`sklearn.model_selection.train_test_split(..., stratify=labels)`) that keeps every class's
//! share, so that a limit on a class-sorted data set (an ImageFolder) does not keep one class.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::{Dataset, Rng, U8Image};

/// The samples `indices` of `inner`, as a data set of their own (sample `i` is `inner`'s
/// `indices[i]`).
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// The samples `indices` of `inner`.
    ///
    /// Errors: an index past `inner`'s end.
    pub fn new(inner: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            anyhow::bail!(
                "subset index {bad} is past the data set's {} samples",
                inner.len()
            );
        }
        Ok(Self { inner, indices })
    }

    /// Which samples of the whole data set these are.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn classes(&self) -> &[String] {
        self.inner.classes()
    }

    fn label(&self, index: usize) -> usize {
        self.inner.label(self.indices[index])
    }

    fn image(&self, index: usize) -> Result<U8Image> {
        let at = *self.indices.get(index).with_context(|| {
            format!("sample {index} is out of range for {} samples", self.len())
        })?;
        self.inner.image(at)
    }

    fn fixed_shape(&self) -> Option<(usize, usize, usize)> {
        self.inner.fixed_shape()
    }

    fn sample_name(&self, index: usize) -> Option<String> {
        self.inner.sample_name(*self.indices.get(index)?)
    }
    fn source_index(&self, index: usize) -> usize {
        self.inner.source_index(self.indices[index])
    }
    fn origin(&self) -> Option<String> {
        self.inner.origin()
    }
    fn fingerprint(&self, index: usize) -> Result<Option<u64>> {
        let at = *self.indices.get(index).with_context(|| {
            format!("sample {index} is out of range for {} samples", self.len())
        })?;
        self.inner.fingerprint(at)
    }
}

/// `n` sample indices of `data` (all when `n >= len`), drawn with `seed` so that each class
/// keeps its share: class `k` with `c_k` of the `N` samples gets `floor(n * c_k / N)`, and the
/// samples left over go to the classes with the largest remainders (then the lower label).
/// Within a class the samples are a seeded random choice; the result is in data-set order.
pub fn stratified_indices(data: &dyn Dataset, n: usize, seed: u64) -> Vec<usize> {
    let total = data.len();
    if n >= total {
        return (0..total).collect();
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); data.classes().len().max(1)];
    for i in 0..total {
        let label = data.label(i).min(by_class.len() - 1);
        by_class[label].push(i);
    }
    let mut quotas: Vec<(usize, usize, usize)> = by_class
        .iter()
        .enumerate()
        .map(|(k, members)| {
            let exact = n * members.len();
            (k, exact / total, exact % total)
        })
        .collect();
    let mut left = n - quotas.iter().map(|q| q.1).sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..quotas.len()).collect();
    by_remainder.sort_by_key(|&k| (std::cmp::Reverse(quotas[k].2), k));
    for k in by_remainder {
        if left == 0 {
            break;
        }
        if quotas[k].1 < by_class[k].len() {
            quotas[k].1 += 1;
            left -= 1;
        }
    }
    let mut chosen = Vec::with_capacity(n);
    for (k, quota, _) in quotas {
        let mut members = by_class[k].clone();
        Rng::for_sample(seed, u64::MAX - 1, k as u64).shuffle(&mut members);
        chosen.extend_from_slice(&members[..quota]);
    }
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemory;

    fn sorted_by_class(counts: &[usize]) -> InMemory {
        let labels: Vec<usize> = counts
            .iter()
            .enumerate()
            .flat_map(|(k, &c)| std::iter::repeat_n(k, c))
            .collect();
        let classes = (0..counts.len()).map(|k| format!("c{k}")).collect();
        let n = labels.len();
        InMemory::new(
            (0..n).map(|i| i as u8).collect(),
            labels,
            (1, 1, 1),
            classes,
        )
        .unwrap()
    }

    /// A subset's sample `i` has its `indices[i]`'s fingerprint, in any order; past the end,
    /// an error.
    #[test]
    fn samples_keep_their_fingerprints() -> Result<()> {
        let data = sorted_by_class(&[2, 1]).with_fingerprints(vec![10, 11, 12])?;
        let subset = Subset::new(Arc::new(data), vec![2, 0])?;
        assert_eq!(subset.fingerprint(0)?, Some(12));
        assert_eq!(subset.fingerprint(1)?, Some(10));
        assert!(subset.fingerprint(2).is_err());
        let unnamed = Subset::new(Arc::new(sorted_by_class(&[2])), vec![1])?;
        assert_eq!(unnamed.fingerprint(0)?, None);
        Ok(())
    }

    #[test]
    fn samples_keep_their_file_names() -> Result<()> {
        let files = crate::FileList::from_paths(
            vec!["a/0.png".into(), "b/1.png".into()],
            vec![0, 1],
            vec!["a".into(), "b".into()],
        )?;
        let subset = Subset::new(Arc::new(files), vec![1])?;
        assert_eq!(subset.sample_name(0).as_deref(), Some("b/1.png"));
        assert_eq!(subset.sample_name(1), None);
        assert_eq!(sorted_by_class(&[1]).sample_name(0), None);
        Ok(())
    }

    #[test]
    fn keeps_every_class_share_and_repeats_for_a_seed() -> Result<()> {
        let data = sorted_by_class(&[500, 300, 200]);
        let chosen = stratified_indices(&data, 100, 7);
        let counts = |idx: &[usize]| {
            let mut c = [0usize; 3];
            idx.iter().for_each(|&i| c[data.label(i)] += 1);
            c
        };
        assert_eq!(counts(&chosen), [50, 30, 20]);
        assert_eq!(chosen, stratified_indices(&data, 100, 7));
        assert_ne!(chosen, stratified_indices(&data, 100, 8));
        assert!(chosen.windows(2).all(|w| w[0] < w[1]));
        let odd = stratified_indices(&data, 7, 1);
        assert_eq!(odd.len(), 7);
        assert_eq!(counts(&odd), [4, 2, 1]);
        assert_eq!(stratified_indices(&data, 5000, 1).len(), 1000);
        let subset = Subset::new(Arc::new(data), chosen.clone())?;
        assert_eq!(subset.len(), 100);
        assert_eq!(subset.image(0)?.data, [chosen[0] as u8]);
        assert!(subset.image(100).is_err());
        Ok(())
    }
}
