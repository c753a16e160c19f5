//! tokio 1.x `sync::broadcast` with a lagging receiver, unchanged.
//!
//! Where it frees under its locks (tokio 1.54.1, `src/sync/broadcast.rs`):
//! `Sender::send` takes the `tail` mutex, then the slot's mutex, and
//! writes `slot.val = Some(value)`. While a receiver lags (has not read
//! the message in that slot yet), the slot still holds the message sent
//! `capacity` sends earlier, and that assignment drops it under both
//! locks. Every receiver that finds the channel empty (`try_recv`, and
//! `recv` before it parks) takes the same `tail` mutex and waits for
//! that drop. The last reader of a message also drops it in
//! `RecvGuard::drop`, under the slot's mutex.
//!
//! The workload: one sender (the freeing thread) broadcasts messages of
//! `--parts` heap buffers of the value size in an `Arc`, the usual way to
//! broadcast something large; a receiver subscribed at start never reads
//! (it lags for good, so every send drops the message `--capacity` sends
//! older); each waiting thread polls its own receiver with `try_recv`,
//! each call timed, and works `--think-ns` between polls (untimed). With freeq, `send` and `try_recv` run inside a
//! `freeq::section()` (synchronous calls only: a section is never held
//! across an `.await`), and `DeferFrees` holds the frees made in them
//! until the section closes, after tokio's unlocks.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use case_studies::harness::{
    self, Config, Counters, Defaults, Flag, Job, Sample, Study, counting, section_if, value_parts,
};
use tokio::sync::broadcast::{self, error::TryRecvError};

/// One message: `--parts` buffers of the value size, shared by every
/// receiver through the `Arc`.
type Msg = Arc<Vec<Vec<u8>>>;

static STUDY: Study = Study {
    name: "broadcast",
    about: "tokio::sync::broadcast (tokio 1.54.1, unchanged) with a receiver that lags for good: every \
            send drops the message sent --capacity sends earlier while it holds the channel's tail \
            mutex and the slot's mutex. Waiting threads poll their own receivers with try_recv, which \
            takes the tail mutex whenever they have caught up. With freeq: DeferFrees plus a \
            freeq::section() around each synchronous send and try_recv.",
    configs: &[
        Config::published("tokio as published, plain calls"),
        Config::IN_SECTION,
    ],
    flags: &[
        Flag {
            name: "capacity",
            default: "64",
            help: "the channel's capacity: messages kept alive by the lagging receiver",
        },
        Flag {
            name: "parts",
            default: "1",
            help: "heap buffers of the value size per message (the drop frees parts + 2 blocks)",
        },
        Flag {
            name: "think-ns",
            default: "2000",
            help: "a waiting thread's own work after each poll, in ns (spun, not counted in its latency)",
        },
        Flag {
            name: "lagging",
            default: "1",
            help: "1: a receiver that never reads keeps every message until it is overwritten; \
                   0: none (the waiting threads are the last readers, unless they fall behind)",
        },
    ],
    defaults: Defaults::LONG,
};

fn main() -> ExitCode {
    harness::main(&STUDY, run)
}

fn message(size: usize, parts: usize, tag: u64) -> Msg {
    Arc::new(value_parts(size, parts, tag))
}

fn run(job: &Job) -> Sample {
    let capacity: usize = job.flag("capacity");
    let parts: usize = job.flag("parts");
    let lagging: u8 = job.flag("lagging");
    let think = Duration::from_nanos(job.flag("think-ns"));
    assert!(capacity > 0, "--capacity: at least 1");
    assert!(parts > 0, "--parts: at least 1");
    let with_freeq = job.is("freeq");

    let (tx, first_rx) = broadcast::channel::<Msg>(capacity);
    // The lagging receiver: subscribed, never read, alive to the end.
    let lagger = (lagging != 0).then_some(first_rx);
    // Fill the channel, so that the first timed sends already overwrite.
    for tag in 0..capacity as u64 {
        let _ = tx.send(message(job.size, parts, tag));
    }

    // Polls, messages received, lag reports.
    let counts = Counters::<3>::new();

    let mut sample = harness::run(
        job,
        job.waiters,
        |_| {
            let mut rx = tx.subscribe();
            let mut tally = counts.tally();
            move || {
                let got = section_if(with_freeq, || rx.try_recv());
                tally.add(0, 1);
                match got {
                    // Dropped here, after the section: a message is the
                    // last reference only if the sender overwrote it.
                    Ok(msg) => {
                        tally.add(1, 1);
                        drop(msg);
                    }
                    Err(TryRecvError::Lagged(_)) => tally.add(2, 1),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Closed) => unreachable!("the sender outlives the window"),
                }
                if !think.is_zero() {
                    harness::untimed(|| spin(think));
                }
            }
        },
        || {
            let tx = &tx;
            counting(capacity as u64, move |tag| {
                // Built before the section: only the send is the crate's.
                let msg = message(job.size, parts, tag);
                let sent = section_if(with_freeq, || tx.send(msg));
                // Fails only without a lagging receiver, once the
                // waiting threads have stopped and dropped theirs.
                drop(sent);
            })
        },
    );
    drop(lagger);

    counts.ratios(&mut sample, &["recv_per_poll", "lagged_per_poll"]);
    sample
}

/// Busy for `d` (a receiver working on what it polled).
fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}
