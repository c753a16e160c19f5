//! `freeq::profile` with `DeferFrees` as the global allocator: a sampled
//! section reports the `free()` calls it held until its release, and the
//! time they took after it in `moved`.

use std::alloc::System;

use freeq::alloc::DeferFrees;

#[global_allocator]
static ALLOC: DeferFrees<System> = DeferFrees::new(System);

#[test]
fn frees_held_by_defer_frees_are_counted() {
    freeq::profile::enable(1);
    freeq::profile::reset();
    let strings = if cfg!(miri) { 8 } else { 100 };
    let at = std::thread::spawn(move || {
        let m = freeq::Mutex::new(vec![String::from("an old record, on the heap"); strings]);
        let fresh = vec![String::from("a new record, on the heap"); strings];
        let mut g = m.lock().unwrap();
        let at = line!() - 1;
        *g = fresh; // drops `strings` strings and a buffer under the lock
        assert_eq!(freeq::alloc::held().frees, strings + 1);
        drop(g);
        at
    })
    .join()
    .unwrap();
    let p = freeq::profile::snapshot();
    freeq::profile::disable();
    let site = p
        .sites()
        .iter()
        .find(|s| s.file() == file!() && s.line() == at)
        .unwrap_or_else(|| panic!("{p}"));
    assert_eq!(site.sections(), 1, "{p}");
    assert_eq!(site.frees(), strings as u64 + 1, "{p}");
    assert_eq!(site.values(), 0, "{p}");
    assert!(site.moved() > std::time::Duration::ZERO, "{p}");
}
