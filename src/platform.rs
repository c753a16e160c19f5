//! Every operating-system service freeq uses, each with its fallback.
//!
//! | service | Linux | macOS | FreeBSD, other unix | Windows | wasm32 |
//! |---|---|---|---|---|---|
//! | process-exit drain ([`at_exit`]) | `atexit` | `atexit` | `atexit` | CRT `atexit` | none: no process exit to hook |
//! | fork hook ([`at_fork_child`], [`at_fork`], [`fork_generation`]) | `pthread_atfork` | `pthread_atfork` | `pthread_atfork` | no fork | no fork |
//! | thread-end hook ([`on_thread_end`]) | pthread key | pthread key | pthread key | none | none |
//! | idle priority ([`set_idle_priority`]) | `SCHED_IDLE` | background QoS class | normal priority | `THREAD_PRIORITY_IDLE` | no threads |
//! | CPU set, affinity, current CPU | `sched_getaffinity`, `sched_setaffinity`, `pthread_setaffinity_np`, `sched_getcpu` | none | none | none | none |
//! | CPU-wait of a thread ([`cpu_wait_ns`]) | `/proc/thread-self/schedstat` | none | none | none | none |
//! | threads ([`Builder`]) | yes | yes | yes | yes | `wasm32-unknown-unknown` and `wasm32-wasip1`: none |
//! | clock ([`Instant`]) | `std` | `std` | `std` | `std` | `wasm32-unknown-unknown`: none, every span reads zero |
//!
//! Where a service is missing, the caller's fallback is documented at the
//! function: no CPU set means one reclaimer per CPU that `std` reports and
//! no pinning; no current CPU means a stable per-thread stand-in; no CPU
//! wait means drop timings are the wall clock; no threads means
//! `Policy::Offload` frees inline; no clock means every type's learned
//! drop cost is the minimum (so nothing is judged worth offloading).
//!
//! Under Miri only what Miri can run is used: no hooks, no scheduler
//! calls, no `/proc`.
//!
//! Every layer may call it; it calls nothing in freeq.

use std::io;

/// Whether this target can start threads. `wasm32-unknown-unknown` and
/// `wasm32-wasip1` cannot (built without the `atomics` feature,
/// `std::thread::spawn` panics there); freeq then never tries.
pub(crate) const THREADS: bool =
    !cfg!(all(target_family = "wasm", not(target_feature = "atomics")));

/// `std::thread::Builder`, except that on a target without threads
/// [`Builder::spawn`] fails with `Unsupported` without trying.
pub(crate) struct Builder(std::thread::Builder);

impl Builder {
    pub(crate) fn new() -> Self {
        Builder(std::thread::Builder::new())
    }

    pub(crate) fn name(self, name: String) -> Self {
        Builder(self.0.name(name))
    }

    /// Starts the thread; dropping the handle detaches it.
    pub(crate) fn spawn(
        self,
        f: impl FnOnce() + Send + 'static,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        if !THREADS {
            drop(f);
            return Err(io::ErrorKind::Unsupported.into());
        }
        self.0.spawn(f)
    }
}

/// `std::time::Instant`, except on `wasm32-unknown-unknown`, which has no
/// clock (`std`'s `Instant::now` panics there): a stand-in whose spans
/// are all zero.
#[cfg(not(all(target_family = "wasm", target_os = "unknown")))]
pub(crate) use std::time::Instant;

/// A clock that never moves, for a target with no clock.
#[cfg(all(target_family = "wasm", target_os = "unknown"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Instant;

/// A deadline on a clock that never moves is reached at once.
#[cfg(all(target_family = "wasm", target_os = "unknown"))]
impl std::ops::Add<std::time::Duration> for Instant {
    type Output = Instant;

    fn add(self, _: std::time::Duration) -> Instant {
        Instant
    }
}

#[cfg(all(target_family = "wasm", target_os = "unknown"))]
impl Instant {
    /// The one instant there is.
    pub(crate) fn now() -> Self {
        Instant
    }

    /// Always zero.
    pub(crate) fn elapsed(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Registers `hook` to run at normal process exit (after `main` returns, or
/// at `std::process::exit` on unix), on the exiting thread, while other
/// threads still run. Unix and Windows: the C runtime's `atexit`. Failure
/// to register, and targets without a process exit to hook (wasm32, Miri),
/// leave it unregistered: nothing is then drained at exit.
///
/// On Windows, `main` returning runs the C runtime's `exit`, which calls
/// the hook; `std::process::exit` calls `ExitProcess` instead, which skips
/// destructors in general (`freeq::guide::platforms`).
pub(crate) fn at_exit(hook: extern "C" fn()) {
    #[cfg(all(any(unix, windows), not(miri)))]
    // SAFETY: (1) `hook` is an `extern "C" fn()`, the signature `atexit`
    // expects, valid for the life of the process.
    unsafe {
        let _ = libc::atexit(hook);
    }
    #[cfg(not(all(any(unix, windows), not(miri))))]
    let _ = hook;
}

/// Registers `hook` to run in the child after `fork()`. Unix only; there is
/// no fork elsewhere. `hook` must be async-signal-safe.
pub(crate) fn at_fork_child(hook: extern "C" fn()) {
    #[cfg(all(unix, not(miri)))]
    // SAFETY: (2) `hook` is an `extern "C" fn()`, the signature
    // `pthread_atfork` expects, valid for the life of the process, and
    // async-signal-safe (the caller's duty). Failure to register is
    // harmless: a forked child is then detected by nothing.
    unsafe {
        let _ = libc::pthread_atfork(None, None, Some(hook));
    }
    #[cfg(not(all(unix, not(miri))))]
    let _ = hook;
}

/// How many forks lie between the process that called this first and the
/// calling process: 0 in the process itself, 1 in its forked child, 2 in
/// that child's child. Work tagged with the generation it was handed over
/// in is the parent's when the generation has changed since: a child
/// never runs it (it may take locks held by threads the child does not
/// have, and the parent runs its own copy). The first call registers the
/// fork hook, so every fork after it is counted. Always 0 where there is
/// no fork (and under Miri).
pub(crate) fn fork_generation() -> usize {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    static GENERATION: AtomicUsize = AtomicUsize::new(0);
    // A flag, not a `Once`: a child forked while another thread registers
    // must not inherit a `Once` in progress, and wait on it forever.
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    // One atomic increment: async-signal-safe.
    extern "C" fn in_child() {
        GENERATION.fetch_add(1, SeqCst);
    }
    if !REGISTERED.load(SeqCst) && !REGISTERED.swap(true, SeqCst) {
        at_fork_child(in_child);
    }
    GENERATION.load(SeqCst)
}

/// Registers `prepare`, `parent` and `child` to run around `fork()`: in
/// the forking thread before it forks, then in the parent and in the child
/// after it. Unix only (not under Miri); elsewhere nothing is registered.
/// Failure to register is harmless to the caller's correctness guarantees
/// as the caller documents them.
// The stats registry and the executor slot use it, only where it can fork.
#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
pub(crate) fn at_fork(prepare: extern "C" fn(), parent: extern "C" fn(), child: extern "C" fn()) {
    #[cfg(all(unix, not(miri)))]
    // SAFETY: (2b) the handlers are `extern "C" fn()`s, the signature
    // `pthread_atfork` expects, valid for the life of the process.
    unsafe {
        let _ = libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
    }
    #[cfg(not(all(unix, not(miri))))]
    let _ = (prepare, parent, child);
}

/// [`at_fork`], once per `registered` flag: the first caller registers,
/// later ones go on at once. A flag, not a `Once`: a child forked while
/// another thread was registering would inherit the `Once` running, and
/// its first caller would wait for it forever. (A thread that takes the
/// protected lock in the instant between another thread's first call and
/// the end of its registration, and holds it across a fork in that
/// instant, is not covered.)
#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
pub(crate) fn at_fork_once(
    registered: &std::sync::atomic::AtomicBool,
    prepare: extern "C" fn(),
    parent: extern "C" fn(),
    child: extern "C" fn(),
) {
    use std::sync::atomic::Ordering::{Acquire, SeqCst};
    if !registered.load(Acquire) && !registered.swap(true, SeqCst) {
        at_fork(prepare, parent, child);
    }
}

/// Makes `hook` run when the calling thread ends: on unix, from the
/// destructor of a pthread key, which runs at thread exit (after the
/// thread's `thread_local!` destructors) and never from `exit()`. `hook` is
/// the same for every thread: the first one given is kept. Returns whether
/// the calling thread is now registered; always `false` off unix.
pub(crate) fn on_thread_end(hook: fn()) -> bool {
    #[cfg(unix)]
    return thread_end::register(hook);
    #[cfg(not(unix))]
    {
        let _ = hook;
        false
    }
}

/// The pthread key behind [`on_thread_end`].
#[cfg(unix)]
mod thread_end {
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};

    /// The key plus one; 0 before it is created, `usize::MAX` if creating
    /// it failed.
    static KEY: AtomicUsize = AtomicUsize::new(0);
    /// What the key's destructor runs: a `fn()`, or null before the first
    /// registration. Set by a compare-and-swap, not under a `OnceLock`: a
    /// child forked while another thread of its parent was setting it
    /// would wait forever on the `OnceLock` it inherited half set.
    static HOOK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

    unsafe extern "C" fn on_thread_exit(_: *mut libc::c_void) {
        let hook = HOOK.load(SeqCst);
        if !hook.is_null() {
            // SAFETY: (3f) a non-null `HOOK` was stored from a `fn()` by
            // `register`, and function pointers and data pointers have
            // the same size on every unix target.
            let hook = unsafe { std::mem::transmute::<*mut (), fn()>(hook) };
            hook();
        }
    }

    fn key() -> Option<libc::pthread_key_t> {
        let k = KEY.load(SeqCst);
        if k == usize::MAX {
            return None;
        }
        if k != 0 {
            return Some((k - 1) as libc::pthread_key_t);
        }
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: (3c) `key` is a valid out-pointer; the destructor is an
        // `extern "C"` function valid for the life of the process.
        let made = unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0;
        let want = if made { key as usize + 1 } else { usize::MAX };
        match KEY.compare_exchange(0, want, SeqCst, SeqCst) {
            Ok(_) => made.then_some(key),
            Err(now) => {
                if made {
                    // Another thread created one first: use that one.
                    // SAFETY: (3d) `key` was created above and never used.
                    unsafe { libc::pthread_key_delete(key) };
                }
                (now != usize::MAX).then(|| (now - 1) as libc::pthread_key_t)
            }
        }
    }

    /// Sets this thread's value of the key (non-null, so that its
    /// destructor runs at thread exit); `false` if that failed.
    pub(super) fn register(hook: fn()) -> bool {
        // The first hook registered stays (freeq registers one only).
        let _ = HOOK.compare_exchange(std::ptr::null_mut(), hook as *mut (), SeqCst, SeqCst);
        let Some(key) = key() else { return false };
        // The value only has to be non-null; nothing reads it.
        let value = std::ptr::NonNull::<u8>::dangling()
            .as_ptr()
            .cast::<libc::c_void>();
        // SAFETY: (3e) `key` is a live key of this process.
        unsafe { libc::pthread_setspecific(key, value) == 0 }
    }
}

/// Moves the calling thread to idle priority (`idle`) or back to the
/// normal one. Linux: `SCHED_IDLE` / `SCHED_OTHER`. macOS: the background
/// QoS class / the default one. Windows: `THREAD_PRIORITY_IDLE` /
/// `THREAD_PRIORITY_NORMAL`. Elsewhere (FreeBSD, where idle priority needs
/// privilege; other unix; Miri) nothing changes: the thread keeps normal
/// priority. Failure is harmless: the thread keeps its priority.
pub(crate) fn set_idle_priority(idle: bool) {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        let policy = if idle {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: (3) `param` is a valid `sched_param` for SCHED_IDLE and
        // SCHED_OTHER (both take priority 0); pid 0 means the calling
        // thread.
        let _ = unsafe { libc::sched_setscheduler(0, policy, &param) };
    }
    #[cfg(all(target_vendor = "apple", not(miri)))]
    {
        let class = if idle {
            libc::qos_class_t::QOS_CLASS_BACKGROUND
        } else {
            libc::qos_class_t::QOS_CLASS_DEFAULT
        };
        // SAFETY: (4) sets the calling thread's own QoS class; priority 0
        // is the class's default relative priority.
        let _ = unsafe { libc::pthread_set_qos_class_self_np(class, 0) };
    }
    #[cfg(all(windows, not(miri)))]
    {
        let priority = if idle {
            windows::THREAD_PRIORITY_IDLE
        } else {
            windows::THREAD_PRIORITY_NORMAL
        };
        // SAFETY: (5) `GetCurrentThread` returns a pseudo handle for the
        // calling thread, always valid and never closed;
        // `SetThreadPriority` only changes that thread's priority.
        let _ = unsafe { windows::SetThreadPriority(windows::GetCurrentThread(), priority) };
    }
    #[cfg(not(all(any(target_os = "linux", target_vendor = "apple", windows), not(miri))))]
    let _ = idle;
}

/// The two kernel32 functions freeq calls, declared here rather than
/// pulling in a bindings crate.
#[cfg(all(windows, not(miri)))]
#[allow(non_snake_case)]
mod windows {
    use std::ffi::c_void;

    pub(super) const THREAD_PRIORITY_IDLE: i32 = -15;
    pub(super) const THREAD_PRIORITY_NORMAL: i32 = 0;

    #[link(name = "kernel32")]
    unsafe extern "system" {
        pub(super) fn GetCurrentThread() -> *mut c_void;
        pub(super) fn SetThreadPriority(thread: *mut c_void, priority: i32) -> i32;
    }
}

/// A set of CPUs. On Linux, a `cpu_set_t`; elsewhere there is none (the
/// type has no values).
#[cfg(all(target_os = "linux", not(miri)))]
pub(crate) struct CpuSet(libc::cpu_set_t);

/// A set of CPUs: none exist on this target.
#[cfg(not(all(target_os = "linux", not(miri))))]
pub(crate) enum CpuSet {}

impl CpuSet {
    /// The CPUs this process may run on: the main thread's set together
    /// with the calling thread's (a thread pinned to one CPU must not
    /// shrink the set to one). `None` where that is unknown (every target
    /// but Linux): the caller falls back to `available_parallelism`.
    pub(crate) fn of_process() -> Option<CpuSet> {
        #[cfg(all(target_os = "linux", not(miri)))]
        // SAFETY: (6) a zeroed `cpu_set_t` is a valid empty set; the calls
        // only write into sets of the size passed. `getpid()` names the
        // main thread.
        unsafe {
            let mut process: libc::cpu_set_t = std::mem::zeroed();
            let mut mine: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            let a = libc::sched_getaffinity(libc::getpid(), size, &mut process) == 0;
            let b = libc::sched_getaffinity(0, size, &mut mine) == 0;
            match (a, b) {
                (false, false) => None,
                (true, false) => Some(CpuSet(process)),
                (false, true) => Some(CpuSet(mine)),
                (true, true) => {
                    for cpu in 0..libc::CPU_SETSIZE as usize {
                        if libc::CPU_ISSET(cpu, &mine) {
                            libc::CPU_SET(cpu, &mut process);
                        }
                    }
                    Some(CpuSet(process))
                }
            }
        }
        #[cfg(not(all(target_os = "linux", not(miri))))]
        None
    }

    /// CPUs in the set.
    pub(crate) fn count(&self) -> usize {
        #[cfg(all(target_os = "linux", not(miri)))]
        // SAFETY: (7) `CPU_COUNT` only reads the set.
        return unsafe { libc::CPU_COUNT(&self.0) } as usize;
        #[cfg(not(all(target_os = "linux", not(miri))))]
        match *self {}
    }

    /// The CPUs in the set, lowest first.
    pub(crate) fn cpus(&self) -> Vec<usize> {
        #[cfg(all(target_os = "linux", not(miri)))]
        return (0..libc::CPU_SETSIZE as usize)
            // SAFETY: (10) `CPU_ISSET` only reads the set, at an index
            // below `CPU_SETSIZE`.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &self.0) })
            .collect();
        #[cfg(not(all(target_os = "linux", not(miri))))]
        match *self {}
    }

    /// Restricts `thread` (started by [`Builder::spawn`], not joined)
    /// to the one CPU `cpu`, or, where that is refused or `cpu` is `None`,
    /// to this set. Whether it now runs on `cpu` alone; refusal of both is
    /// harmless (the thread keeps the affinity it inherited).
    pub(crate) fn pin_thread(
        &self,
        thread: &std::thread::JoinHandle<()>,
        cpu: Option<usize>,
    ) -> bool {
        #[cfg(all(target_os = "linux", not(miri)))]
        {
            use std::os::unix::thread::JoinHandleExt;
            let size = std::mem::size_of::<libc::cpu_set_t>();
            let handle = thread.as_pthread_t();
            if let Some(cpu) = cpu.filter(|&c| c < libc::CPU_SETSIZE as usize) {
                // SAFETY: (11) a zeroed `cpu_set_t` is a valid empty set and
                // `cpu` is below `CPU_SETSIZE`; `handle` names a thread that
                // has not been joined or detached yet (its `JoinHandle` is
                // borrowed), so it is a live pthread; the call reads the set
                // of the size passed.
                let pinned = unsafe {
                    let mut one: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut one);
                    libc::pthread_setaffinity_np(handle, size, &one) == 0
                };
                if pinned {
                    return true;
                }
            }
            // SAFETY: (12) as in (11), with `self.0`, a valid set of the
            // size passed.
            let _ = unsafe { libc::pthread_setaffinity_np(handle, size, &self.0) };
            false
        }
        #[cfg(not(all(target_os = "linux", not(miri))))]
        {
            let _ = (thread, cpu);
            match *self {}
        }
    }
}

/// The CPU the calling thread runs on; `None` where that is unknown (every
/// target but Linux): the caller uses a stable per-thread stand-in.
pub(crate) fn current_cpu() -> Option<usize> {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: (9) `sched_getcpu` takes no arguments and only reads the
        // calling thread's CPU number.
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu >= 0 {
            return Some(cpu as usize);
        }
    }
    None
}

/// Nanoseconds the calling thread has spent runnable but waiting for a CPU
/// (the second field of Linux's per-thread `schedstat`); `None` where that
/// is unknown (every target but Linux, or a kernel without schedstats):
/// drop timings are then the wall clock.
pub(crate) fn cpu_wait_ns() -> Option<u64> {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        use std::io::Read;
        let mut file = std::fs::File::open("/proc/thread-self/schedstat").ok()?;
        let mut buf = [0u8; 96];
        let n = file.read(&mut buf).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        text.split_ascii_whitespace().nth(1)?.parse().ok()
    }
    #[cfg(not(all(target_os = "linux", not(miri))))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux reports the process's CPUs and the current one; every other
    /// target reports neither, and callers fall back.
    #[test]
    fn cpu_services_exist_on_linux_only() {
        let linux = cfg!(all(target_os = "linux", not(miri)));
        let count = CpuSet::of_process().map(|set| set.count());
        assert_eq!(count.is_some_and(|n| n > 0), linux, "{count:?}");
        assert_eq!(current_cpu().is_some(), linux);
        if let Some(set) = CpuSet::of_process() {
            let cpus = set.cpus();
            assert_eq!(cpus.len(), set.count());
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let thread = Builder::new()
                .spawn(move || {
                    let _ = rx.recv();
                })
                .unwrap();
            assert!(set.pin_thread(&thread, cpus.first().copied()));
            assert!(!set.pin_thread(&thread, None), "to the whole set");
            drop(tx);
            thread.join().unwrap();
        }
    }

    /// Priority changes are harmless on every target, whether or not it
    /// has idle priority.
    #[test]
    fn idle_priority_and_back() {
        std::thread::spawn(|| {
            set_idle_priority(true);
            set_idle_priority(false);
        })
        .join()
        .unwrap();
    }

    /// Where threads exist, `Builder` starts one; where they do not, it
    /// reports `Unsupported` (checked on wasm by tests/threadless.rs).
    #[test]
    #[cfg_attr(miri, ignore = "the thread is detached, which Miri calls a leak")]
    fn builder_starts_a_named_thread() {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = Builder::new().name("freeq-test".into()).spawn(move || {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        let spawned = spawned.map(drop);
        assert_eq!(spawned.is_ok(), THREADS);
        if THREADS {
            assert_eq!(rx.recv().unwrap().as_deref(), Some("freeq-test"));
        }
    }
}
