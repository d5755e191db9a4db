//! Event parity suite: redsync 2.0's event tests ported plus this library's guarantees,
//! each scenario run on tokio, smol and async-std.
//!
//! The scenario bodies live in `tests/scenarios/event.rs`; each line below expands to
//! `name::on_tokio`, `name::on_smol` and `name::on_async_std` (the latter two behind their
//! cargo features). Run everything with `cargo test --all-features --test event`.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;
#[path = "scenarios/event.rs"]
mod event_scenarios;

use event_scenarios::*;

runtime_tests! {
    set_then_wait => set_then_wait();
    wait_then_set => wait_then_set();
    wait_timeout => wait_timeout();
    clear => clear();
    signal_persists => signal_persists();
    one_waiter_per_set_separate_handles => one_waiter_per_set(false);
    one_waiter_per_set_shared_handle => one_waiter_per_set(true);
    cancelled_waits_never_swallow => cancelled_waits_never_swallow();
    close_fails_waits => close_fails_waits();
    redsync2_key_layout => redsync2_key_layout();
    // A timed-out wait must not leave a blocking wait behind that diverts the next
    // signal: is_set() is true right after set() when nobody waits.
    is_set_after_timed_out_wait => is_set_after_timed_out_wait();
}
