//! Helpers shared by the integration tests that hand work to reclaimers.
//! Each test binary uses some of them.
#![allow(dead_code)]

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::Duration;

use freeq::Policy;

/// How long a test waits for something that should happen promptly before
/// it declares the runtime stuck.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Serialises the tests of one binary that wait on freeq's reclaimers, and
/// runs those at normal priority: at idle priority they may get no CPU at
/// all while the machine is busy.
pub fn serial() -> MutexGuard<'static, ()> {
    freeq::set_reclaimer_priority(freeq::ReclaimerPriority::Normal);
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The calling thread's name, or `"<unnamed>"`.
pub fn thread_name() -> String {
    thread::current().name().unwrap_or("<unnamed>").to_owned()
}

/// The name of the threads [`within`] runs its work on.
pub const HELPER: &str = "test-helper";

/// Runs `f` on a helper thread and fails the test if it does not return
/// within [`PATIENCE`]: a stuck reclaimer then fails one test instead of
/// hanging the whole binary.
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(HELPER.into())
        .spawn(move || {
            let _ = tx.send(panic::catch_unwind(AssertUnwindSafe(f)));
        })
        .unwrap();
    match rx.recv_timeout(PATIENCE) {
        Ok(Ok(v)) => v,
        Ok(Err(payload)) => panic::resume_unwind(payload),
        Err(_) => panic!("{what} did not return within {PATIENCE:?}"),
    }
}

/// `freeq::quiesce()`, failing the test if it does not return in time.
pub fn quiesce() {
    within("freeq::quiesce()", freeq::quiesce);
}

/// Sets the calling thread's policy, with every batch worth offloading
/// however cheap, and restores the old policy when dropped.
pub struct RestorePolicy(Policy);

impl RestorePolicy {
    pub fn set(policy: Policy) -> RestorePolicy {
        let old = freeq::policy();
        freeq::set_offload_threshold_ns(0);
        freeq::set_policy(policy);
        RestorePolicy(old)
    }
}

impl Drop for RestorePolicy {
    fn drop(&mut self) {
        freeq::set_policy(self.0);
    }
}
