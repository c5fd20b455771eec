//! `data_sync` user events as task-worker consumes them:
//! `task_worker::contacts::UserEvent::decode`, then applied to a
//! `ContactDirectory` (the idempotency and tombstone logic runs on the
//! decoded values, so it meets the stranger's bytes too).
//!
//! Input: one event body per line, applied in order to a fresh directory, so
//! the fuzzer can build duplicates, reorderings and deletions.

#![no_main]

use libfuzzer_sys::fuzz_target;
use task_worker::contacts::{Applied, ContactDirectory, UserEvent};

fuzz_target!(|data: &[u8]| {
    let directory = ContactDirectory::new();
    for body in data.split(|&b| b == b'\n') {
        let Ok(event) = UserEvent::decode(body) else {
            continue;
        };
        let id = event.user_id().expect("decode checked the user id");
        let before = directory.get(&id);
        match directory.apply(&event) {
            Ok(Applied::Duplicate | Applied::Stale) => {
                assert_eq!(
                    directory.get(&id),
                    before,
                    "a skipped event changed the directory"
                );
            }
            Ok(Applied::Changed) | Err(_) => {}
        }
        let _ = directory.list();
    }
});
