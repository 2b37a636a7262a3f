//! The algorithms one direction of a cuDNN convolution may run, fastest first, and which one is
//! in use: when the one in use cannot run (its scratch space cannot be allocated, or cuDNN
//! refuses at run time what its search accepted), the next is tried, as PyTorch's
//! `AlgoIterator::try_all` (`aten/src/ATen/native/cudnn/Conv_v7.cpp`) moves on after an
//! out-of-memory or cuDNN error, and the one that ran is kept for the next calls (PyTorch's
//! cache insert). Generic over what a candidate is, so that the rule is tested without a GPU.

/// One attempt's outcome.
pub(crate) enum Attempt<R, E> {
    /// It ran.
    Done(R),
    /// This candidate cannot run, for the reason given (`memory` when it was memory, which a
    /// later call may find): try the next.
    Next { why: String, memory: bool },
    /// An error no other candidate would avoid.
    Fail(E),
}

/// How [`Ranked::try_all`] ended without a result.
#[derive(Debug)]
pub(crate) enum Exhausted<E> {
    /// Every candidate was tried and none ran: each one's reason, and whether any of them was
    /// memory (a later call may succeed; the candidates are tried again from the fastest then).
    None { tried: String, memory: bool },
    /// An attempt failed in a way no other candidate would avoid.
    Fail(E),
}

/// Candidates in order of preference and the one in use.
pub(crate) struct Ranked<T> {
    list: Vec<T>,
    at: usize,
}

impl<T> Ranked<T> {
    /// `None` for an empty list.
    pub(crate) fn new(list: Vec<T>) -> Option<Self> {
        (!list.is_empty()).then_some(Self { list, at: 0 })
    }

    /// The candidate in use.
    pub(crate) fn current(&self) -> &T {
        &self.list[self.at]
    }

    /// Runs `attempt` with the candidate in use, then, while one says [`Attempt::Next`], with
    /// the ones after it in turn (`switched` is true for a candidate not in use before this
    /// call). The candidate that ran stays in use. When none runs and any failed for memory,
    /// the fastest is in use again (the memory may be free on a later call); otherwise the
    /// last one stays, and the next call ends the same way at once.
    pub(crate) fn try_all<R, E>(
        &mut self,
        mut attempt: impl FnMut(&T, bool) -> Attempt<R, E>,
    ) -> std::result::Result<R, Exhausted<E>> {
        let mut tried = Vec::new();
        let mut memory = false;
        let mut switched = false;
        loop {
            match attempt(&self.list[self.at], switched) {
                Attempt::Done(r) => return Ok(r),
                Attempt::Fail(e) => return Err(Exhausted::Fail(e)),
                Attempt::Next { why, memory: m } => {
                    tried.push(why);
                    memory |= m;
                }
            }
            if self.at + 1 == self.list.len() {
                if memory {
                    self.at = 0;
                }
                return Err(Exhausted::None {
                    tried: tried.join("; "),
                    memory,
                });
            }
            self.at += 1;
            switched = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Candidates named by their scratch bytes; `free` bytes can be allocated; `refused` ones
    /// cuDNN refuses at run time.
    fn run(
        ranked: &mut Ranked<usize>,
        free: usize,
        refused: &[usize],
        log: &mut Vec<(usize, bool)>,
    ) -> std::result::Result<usize, Exhausted<String>> {
        ranked.try_all(|&bytes, switched| {
            log.push((bytes, switched));
            if bytes > free {
                Attempt::Next {
                    why: format!("{bytes} B: out of memory"),
                    memory: true,
                }
            } else if refused.contains(&bytes) {
                Attempt::Next {
                    why: format!("{bytes} B: not supported"),
                    memory: false,
                }
            } else if bytes == 13 {
                Attempt::Fail("execution failed".to_string())
            } else {
                Attempt::Done(bytes)
            }
        })
    }

    #[test]
    fn the_fastest_runs_when_it_can() {
        let mut r = Ranked::new(vec![300, 100, 0]).unwrap();
        let mut log = Vec::new();
        assert_eq!(run(&mut r, 1000, &[], &mut log).unwrap(), 300);
        assert_eq!(log, [(300, false)]);
        assert_eq!(*r.current(), 300);
    }

    #[test]
    fn a_workspace_that_cannot_be_allocated_moves_to_the_next_which_is_kept() {
        let mut r = Ranked::new(vec![300, 100, 0]).unwrap();
        let mut log = Vec::new();
        assert_eq!(run(&mut r, 150, &[], &mut log).unwrap(), 100);
        assert_eq!(log, [(300, false), (100, true)]);
        // The next call starts from the one that ran, as PyTorch's cache keeps it.
        log.clear();
        assert_eq!(run(&mut r, 1000, &[], &mut log).unwrap(), 100);
        assert_eq!(log, [(100, false)]);
    }

    #[test]
    fn a_refusal_at_run_time_moves_on_too() {
        let mut r = Ranked::new(vec![300, 100, 0]).unwrap();
        let mut log = Vec::new();
        assert_eq!(run(&mut r, 1000, &[300, 100], &mut log).unwrap(), 0);
        assert_eq!(log, [(300, false), (100, true), (0, true)]);
    }

    #[test]
    fn none_that_runs_lists_every_reason_and_memory_starts_over() {
        let mut r = Ranked::new(vec![300, 100]).unwrap();
        let mut log = Vec::new();
        match run(&mut r, 50, &[], &mut log) {
            Err(Exhausted::None { tried, memory }) => {
                assert!(memory);
                assert_eq!(tried, "300 B: out of memory; 100 B: out of memory");
            }
            other => panic!("{other:?}"),
        }
        // Memory may be free later: the fastest is tried first again.
        assert_eq!(*r.current(), 300);
        log.clear();
        assert_eq!(run(&mut r, 1000, &[], &mut log).unwrap(), 300);
    }

    #[test]
    fn refusals_only_keep_the_last_and_end_at_once_next_time() {
        let mut r = Ranked::new(vec![300, 100]).unwrap();
        let mut log = Vec::new();
        match run(&mut r, 1000, &[300, 100], &mut log) {
            Err(Exhausted::None { tried, memory }) => {
                assert!(!memory);
                assert_eq!(tried, "300 B: not supported; 100 B: not supported");
            }
            other => panic!("{other:?}"),
        }
        log.clear();
        assert!(run(&mut r, 1000, &[300, 100], &mut log).is_err());
        assert_eq!(log, [(100, false)]);
    }

    #[test]
    fn other_errors_stop_at_once() {
        let mut r = Ranked::new(vec![13, 0]).unwrap();
        let mut log = Vec::new();
        match run(&mut r, 1000, &[], &mut log) {
            Err(Exhausted::Fail(e)) => assert_eq!(e, "execution failed"),
            other => panic!("{other:?}"),
        }
        assert_eq!(log, [(13, false)]);
    }

    #[test]
    fn an_empty_list_has_no_ranking() {
        assert!(Ranked::<usize>::new(Vec::new()).is_none());
    }
}
