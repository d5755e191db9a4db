//! Semaphore parity suite: redsync 2.0's test suite ported (both init strategies) plus
//! this library's guarantees, each scenario run on tokio, smol and async-std.
//!
//! The scenario bodies live in `tests/scenarios/semaphore.rs`; each line below expands to
//! `name::on_tokio`, `name::on_smol` and `name::on_async_std` (the latter two behind their
//! cargo features). Run everything with `cargo test --all-features --test semaphore`.

#[allow(unused_imports)]
mod common;
#[macro_use]
mod scenarios;
#[path = "scenarios/semaphore.rs"]
mod semaphore_scenarios;

use redis_sync::InitStrategy::{Lua, OptimisticLocking};
use semaphore_scenarios::*;

runtime_tests! {
    // 10 concurrent tasks on count 1: never two inside.
    count_one_ten_tasks_separate_handles_lua =>
        never_more_than_count_separate_handles(Lua, 1, 10, 2);
    count_one_ten_tasks_separate_handles_optimistic =>
        never_more_than_count_separate_handles(OptimisticLocking, 1, 10, 2);
    count_one_ten_tasks_shared_handle_lua =>
        never_more_than_count_shared_handle(Lua, 1, 10, 2);
    count_one_ten_tasks_shared_handle_optimistic =>
        never_more_than_count_shared_handle(OptimisticLocking, 1, 10, 2);

    // 9 tasks on count 3: never more than 3 inside.
    count_three_nine_tasks_separate_handles_lua =>
        never_more_than_count_separate_handles(Lua, 3, 9, 2);
    count_three_nine_tasks_separate_handles_optimistic =>
        never_more_than_count_separate_handles(OptimisticLocking, 3, 9, 2);
    count_three_nine_tasks_shared_handle_lua =>
        never_more_than_count_shared_handle(Lua, 3, 9, 2);
    count_three_nine_tasks_shared_handle_optimistic =>
        never_more_than_count_shared_handle(OptimisticLocking, 3, 9, 2);

    count_out_of_range_lua => count_out_of_range(Lua);
    count_out_of_range_optimistic => count_out_of_range(OptimisticLocking);

    release_without_acquire_lua => release_without_acquire(Lua);
    release_without_acquire_optimistic => release_without_acquire(OptimisticLocking);

    acquire_timeout_lua => acquire_timeout(Lua);
    acquire_timeout_optimistic => acquire_timeout(OptimisticLocking);
    timeouts_racing_releases_lua => timeouts_racing_releases(Lua);
    timeouts_racing_releases_optimistic => timeouts_racing_releases(OptimisticLocking);

    attach_learns_count_lua => attach_learns_count(Lua);
    attach_learns_count_optimistic => attach_learns_count(OptimisticLocking);
    attach_waits_for_creator_lua => attach_waits_for_creator(Lua);
    attach_waits_for_creator_optimistic => attach_waits_for_creator(OptimisticLocking);
    attach_timeout => attach_timeout();

    count_mismatch_lua => count_mismatch(Lua);
    count_mismatch_optimistic => count_mismatch(OptimisticLocking);

    concurrent_creators_lua => concurrent_creators(Lua, false);
    concurrent_creators_optimistic => concurrent_creators(OptimisticLocking, false);
    concurrent_creators_mixed_strategies => concurrent_creators(Lua, true);
    concurrent_creators_disagree_lua => concurrent_creators_disagree(Lua);
    concurrent_creators_disagree_optimistic => concurrent_creators_disagree(OptimisticLocking);

    try_acquire_when_full_lua => try_acquire_when_full(Lua);
    try_acquire_when_full_optimistic => try_acquire_when_full(OptimisticLocking);

    forget_then_release_lua => forget_then_release(Lua);
    forget_then_release_optimistic => forget_then_release(OptimisticLocking);

    close_fails_acquires_lua => close_fails_acquires(Lua);
    close_fails_acquires_optimistic => close_fails_acquires(OptimisticLocking);

    dropping_handle_returns_forgotten_permits_lua =>
        dropping_handle_returns_forgotten_permits(Lua);
    dropping_handle_returns_forgotten_permits_optimistic =>
        dropping_handle_returns_forgotten_permits(OptimisticLocking);

    release_reports_ok_lua => release_reports_ok(Lua);
    release_reports_ok_optimistic => release_reports_ok(OptimisticLocking);

    conservation_while_held_lua => conservation_while_held(Lua);
    conservation_while_held_optimistic => conservation_while_held(OptimisticLocking);

    redsync2_key_layout_lua => redsync2_key_layout(Lua);
    redsync2_key_layout_optimistic => redsync2_key_layout(OptimisticLocking);
    default_key_layout_lua => default_key_layout(Lua);
    default_key_layout_optimistic => default_key_layout(OptimisticLocking);

    python_interop_rust_creates_lua => python_interop_rust_creates(Lua);
    python_interop_rust_creates_optimistic => python_interop_rust_creates(OptimisticLocking);
    python_interop_python_creates_lua => python_interop_python_creates(Lua);
    python_interop_python_creates_optimistic => python_interop_python_creates(OptimisticLocking);
}

runtime_tests! {
    // A timed-out acquire must not leave a blocking wait behind that diverts the next
    // released permit: try_acquire() on another handle finds it free at once.
    try_acquire_after_timed_out_wait_lua => try_acquire_after_timed_out_wait(Lua);
    try_acquire_after_timed_out_wait_optimistic =>
        try_acquire_after_timed_out_wait(OptimisticLocking);
}
