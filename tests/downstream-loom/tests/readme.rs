//! The model from freeq's guide, chapter `freeq::guide::loom`,
//! kept here so that it compiles and passes.
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;

#[test]
fn two_writers() {
    loom::model(|| {
        let cache = Arc::new((
            freeq::Mutex::new(vec![String::from("v0")]),
            AtomicUsize::new(0),
        ));
        let writer = |cache: &(freeq::Mutex<Vec<String>>, AtomicUsize), value: &str| {
            let (map, version) = cache;
            let mut v = map.lock().unwrap();
            version.fetch_add(1, SeqCst); // loom may switch threads here
            let old = std::mem::replace(&mut *v, vec![value.to_string()]);
            freeq::defer(old); // freed after the unlock, not under the lock
        };
        let c2 = cache.clone();
        let t = thread::spawn(move || writer(&c2, "v1"));
        writer(&cache, "v2");
        t.join().unwrap();
        assert_eq!(cache.1.load(SeqCst), 2);
        assert_eq!(freeq::pending(), 0);
    });
}
