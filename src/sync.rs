//! Locking that survives a panic elsewhere: a thread that panicked while holding
//! a lock (a bug) must not make every later operation of the mount panic too, so
//! the data behind a poisoned mutex is used as it is (each holder keeps it
//! consistent at every await point of its own).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, poisoned or not.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
