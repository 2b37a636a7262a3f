//! Where a training or testing pass takes its batches from.

use anyhow::Result;
use datasets::{Batch, Loader, ResidentLoader};

/// A sequence of batches per epoch: a [`Loader`] over images, or anything else that yields
/// `(inputs, labels, dataset indices)`, such as cached backbone features.
pub trait BatchSource: Send + Sync {
    /// Batches per epoch.
    fn num_batches(&self) -> usize;
    /// Samples per epoch.
    fn num_samples(&self) -> usize;
    /// The batches of epoch `epoch` (from 0): the order may depend on the epoch, nothing else.
    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_>;
    /// The keys of epoch `epoch`'s samples in batch order, before batching: what
    /// [`BatchSource::batches`] cuts into batches (a data-parallel rank takes its share).
    fn order(&self, epoch: usize) -> Vec<usize>;
    /// The batches of the given groups of keys (from [`BatchSource::order`]) for `epoch`,
    /// each sample as [`BatchSource::batches`] would give it.
    fn batches_of(
        &self,
        epoch: usize,
        groups: Vec<Vec<usize>>,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + '_>;
}

impl BatchSource for Loader {
    fn num_batches(&self) -> usize {
        Loader::num_batches(self)
    }

    fn num_samples(&self) -> usize {
        Loader::num_samples(self)
    }

    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        Box::new(self.epoch(epoch))
    }

    fn order(&self, epoch: usize) -> Vec<usize> {
        Loader::order(self, epoch)
    }

    fn batches_of(
        &self,
        epoch: usize,
        groups: Vec<Vec<usize>>,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        Box::new(self.epoch_of(epoch, groups))
    }
}

impl BatchSource for ResidentLoader {
    fn num_batches(&self) -> usize {
        ResidentLoader::num_batches(self)
    }

    fn num_samples(&self) -> usize {
        ResidentLoader::num_samples(self)
    }

    fn batches(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        Box::new(self.epoch(epoch))
    }

    fn order(&self, epoch: usize) -> Vec<usize> {
        self.loader().order(epoch)
    }

    fn batches_of(
        &self,
        epoch: usize,
        groups: Vec<Vec<usize>>,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        Box::new(groups.into_iter().map(move |g| self.batch(epoch, &g)))
    }
}
