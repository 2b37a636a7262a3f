//! How the process keeps the memory of freed tensors, and what it says when memory runs out.
//!
//! A CPU training step allocates and frees the same large buffers (activations, gradients,
//! im2col columns) over and over. glibc's malloc hands every block over 32 MB straight to
//! `mmap` and back to the kernel when freed, so each step pays for zero-filled fresh pages
//! again: about 13% of a `resnet18-cifar` step at batch 128, whose first-stage activations are
//! 33.5 MB. [`keep_freed_memory`] makes malloc serve every block from its heap and keep what is
//! freed for the next step, as PyTorch's CPU allocator effectively does.

/// Makes freed memory stay in the process for reuse (glibc on Linux; elsewhere nothing). The
/// process then holds on to its peak memory. Call it once, at the start of a training program.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's thresholds; it is safe to call at any time.
    unsafe {
        // No block comes from mmap any more (except, in threads other than the main one,
        // blocks over their 64 MB heaps), and no heap is trimmed back to the kernel.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// The system allocator ([`std::alloc::System`]), with blocks of [`LINE_ALIGNED_FROM`] bytes
/// and more on a cache line, and except that when memory runs out the process
/// ends with an error saying what to do, with status 1, where Rust's own handling prints
/// "memory allocation of N bytes failed" and aborts (status 134). PyTorch says as much in its
/// `RuntimeError` ("DefaultCPUAllocator: not enough memory: you tried to allocate N bytes").
/// The training programs declare it as their global allocator:
///
/// ```
/// #[global_allocator]
/// static ALLOCATOR: train::memory::ReportOutOfMemory = train::memory::ReportOutOfMemory;
/// ```
///
/// Every failed allocation ends the process, also one whose caller could have gone on
/// (`Vec::try_reserve`, which some image decoders use): a program that would rather name the
/// one image too large checks its size first.
///
/// Memory runs out where the allocator is refused it: under an address-space limit (`ulimit
/// -v`), or for one block larger than the machine's memory and swap (Linux's default
/// overcommit). Where Linux's out-of-memory killer ends the process instead, nothing in it
/// runs. Rust allocations cannot fail back to their caller (`Vec`, `Tensor`), so the process
/// ends where the allocation failed: files already written stay as they are, and the run's
/// temporaries are cleaned when it is resumed or taken over, as after a kill.
pub struct ReportOutOfMemory;

/// Blocks from this size on start on a cache line (64 bytes), whatever alignment their type
/// asks for: tensors, activations and gradients, whose rows the CPU kernels read and write 64
/// bytes at a time (an AVX-512 vector, an AMX tile row), which malloc's 16-byte alignment
/// splits across two lines each. (PyTorch's CPU allocator aligns every block to 64 bytes.)
pub const LINE_ALIGNED_FROM: usize = 64 << 10;

/// The layout the system allocator is asked for in place of `layout` (the same size; 64-byte
/// alignment from [`LINE_ALIGNED_FROM`] bytes on). A function of the size and alignment alone,
/// so that a block is freed with the layout it was allocated with.
fn system_layout(layout: std::alloc::Layout) -> std::alloc::Layout {
    match layout.size() >= LINE_ALIGNED_FROM && layout.align() < 64 {
        // A size too large for 64-byte alignment (within 63 bytes of `isize::MAX`) keeps its
        // own layout: the allocator refuses it either way.
        true => std::alloc::Layout::from_size_align(layout.size(), 64).unwrap_or(layout),
        false => layout,
    }
}

// SAFETY: every call is the system allocator's, with the layout of `system_layout` (the same
// for a block's allocation, reallocation and release, since it depends on its size and
// alignment alone); a failed allocation ends the process without returning (and without
// unwinding, which a global allocator must not do).
unsafe impl std::alloc::GlobalAlloc for ReportOutOfMemory {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        checked(
            std::alloc::System.alloc(system_layout(layout)),
            layout.size(),
        )
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let system = system_layout(layout);
        checked(std::alloc::System.alloc_zeroed(system), layout.size())
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY (of the new layout): the caller promises that `new_size` rounded up to
        // `layout.align()` does not overflow `isize`.
        let (old, new) = (
            system_layout(layout),
            system_layout(std::alloc::Layout::from_size_align_unchecked(
                new_size,
                layout.align(),
            )),
        );
        if old.align() == new.align() {
            return checked(std::alloc::System.realloc(ptr, old, new_size), new_size);
        }
        // Across the threshold: a new block of the new alignment, the values copied.
        let moved = checked(std::alloc::System.alloc(new), new_size);
        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
        std::alloc::System.dealloc(ptr, old);
        moved
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, system_layout(layout))
    }
}

/// The advice [`ReportOutOfMemory`] prints after its first line (see [`on_out_of_memory`]).
static ADVICE: std::sync::atomic::AtomicPtr<String> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Sets what [`ReportOutOfMemory`] says after "out of memory: N bytes could not be allocated",
/// such as the flags that make the work smaller (`--batch-size`). The last call's advice
/// counts; without any, the first line is all.
pub fn on_out_of_memory(advice: String) {
    let new = Box::into_raw(Box::new(advice));
    // The previous advice is left allocated: a thread may be printing it.
    ADVICE.swap(new, std::sync::atomic::Ordering::AcqRel);
}

/// `ptr`, or the end of the process when it is null (an allocation of `size` bytes failed).
fn checked(ptr: *mut u8, size: usize) -> *mut u8 {
    if ptr.is_null() {
        out_of_memory(size)
    }
    ptr
}

/// Prints the error and ends the process with status 1. Nothing here allocates: the message is
/// formatted into a buffer on the stack and written straight to standard error.
#[cold]
fn out_of_memory(size: usize) -> ! {
    use std::fmt::Write;
    let mut message = StackText::default();
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(2) } == 1 {
        // Below a progress bar's line rather than inside it.
        message.push("\n");
    }
    let _ = write!(
        message,
        "Error: out of memory: {size} bytes ({:.1} GiB) could not be allocated",
        size as f64 / (1u64 << 30) as f64
    );
    let advice = ADVICE.load(std::sync::atomic::Ordering::Acquire);
    if !advice.is_null() {
        message.push("\n");
        // SAFETY: a set advice is never freed (see `on_out_of_memory`).
        message.push(unsafe { &*advice });
    }
    message.end_line();
    let bytes = message.as_bytes();
    // SAFETY: write reads `bytes`, which lives to the end of this function; _exit ends the
    // process at once (no destructors, no atexit handlers, which could allocate).
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(1)
    }
}

/// Text in a fixed buffer on the stack, cut at its capacity.
struct StackText {
    buf: [u8; 2048],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            buf: [0; 2048],
            len: 0,
        }
    }
}

impl StackText {
    /// Appends `s`, or as much of it as fits whole characters, keeping the last byte for the
    /// message's closing newline.
    fn push(&mut self, s: &str) {
        let room = self.buf.len() - 1 - self.len.min(self.buf.len() - 1);
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
    }

    /// Ends the text with a newline (in the byte `push` keeps for it).
    fn end_line(&mut self) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b'\n';
            self.len += 1;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s);
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// Minor page faults of this thread so far.
    fn faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
            usage.ru_minflt
        }
    }

    /// Faults taken while filling a fresh 40 MB block.
    fn faults_filling_40_mb() -> i64 {
        let before = faults();
        let block = std::hint::black_box(vec![1u8; 40 << 20]);
        assert_eq!(block[(40 << 20) - 1], 1);
        drop(block);
        faults() - before
    }

    #[test]
    fn the_out_of_memory_message_is_cut_at_its_buffer() {
        use std::fmt::Write;
        let mut text = super::StackText::default();
        write!(text, "{} bytes ({:.1} GiB)", 3usize << 30, 3.0).unwrap();
        assert_eq!(text.as_bytes(), b"3221225472 bytes (3.0 GiB)");
        text.push(&"é".repeat(3000));
        text.end_line();
        let bytes = text.as_bytes();
        assert_eq!(
            bytes.len(),
            2047,
            "cut before a split character, then the newline"
        );
        assert!(std::str::from_utf8(bytes).is_ok_and(|t| t.ends_with("é\n")));
    }

    /// Blocks from [`super::LINE_ALIGNED_FROM`] bytes start on a cache line, also after a
    /// reallocation across the threshold either way, with their values kept.
    #[test]
    fn large_blocks_start_on_a_cache_line() {
        use std::alloc::{GlobalAlloc, Layout};
        let a = super::ReportOutOfMemory;
        let large = super::LINE_ALIGNED_FROM;
        // SAFETY: each block is used within its size and freed with its current layout.
        unsafe {
            let small = Layout::from_size_align(100, 4).unwrap();
            let p = a.alloc(small);
            p.write_bytes(7, 100);
            // Small to large: moved to a line, the values with it.
            let p = a.realloc(p, small, large + 4);
            assert_eq!(p as usize % 64, 0);
            assert!((0..100).all(|i| *p.add(i) == 7));
            p.add(100).write_bytes(9, large + 4 - 100);
            // Large to larger, then back below the threshold.
            let l1 = Layout::from_size_align(large + 4, 4).unwrap();
            let p = a.realloc(p, l1, 3 * large);
            assert_eq!(p as usize % 64, 0);
            assert!(*p.add(99) == 7 && *p.add(large + 3) == 9);
            let l2 = Layout::from_size_align(3 * large, 4).unwrap();
            let p = a.realloc(p, l2, 200);
            assert!(*p.add(99) == 7 && *p.add(199) == 9);
            a.dealloc(p, Layout::from_size_align(200, 4).unwrap());
            for size in [large, large + 1, 40 << 20] {
                let layout = Layout::from_size_align(size, 4).unwrap();
                let (p, z) = (a.alloc(layout), a.alloc_zeroed(layout));
                assert_eq!((p as usize % 64, z as usize % 64), (0, 0), "{size} bytes");
                assert!(*z == 0 && *z.add(size - 1) == 0);
                a.dealloc(p, layout);
                a.dealloc(z, layout);
            }
        }
    }

    #[test]
    fn a_freed_large_block_is_reused_without_new_page_faults() {
        // 40 MB is 10,240 pages: without the switch each fill faults them all in again.
        super::keep_freed_memory();
        faults_filling_40_mb();
        let again = faults_filling_40_mb();
        assert!(
            again < 2_000,
            "{again} page faults refilling a reused block"
        );
        let from_a_thread = std::thread::spawn(|| vec![2u8; 100 << 20].len());
        assert_eq!(from_a_thread.join().unwrap(), 100 << 20);
    }
}
