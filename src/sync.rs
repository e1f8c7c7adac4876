//! Poisoned locks, one policy for the whole crate: a panicked holder cannot leave pgredact's maps,
//! snapshots and counters half-written in a way that matters more than losing them (a cancel key,
//! an idle connection, a rate-limit bucket), so every std lock recovers the data, through these
//! three functions.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks a mutex, recovering the data of a poisoned one.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads a RwLock, recovering the data of a poisoned one.
pub(crate) fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

/// Writes a RwLock, recovering the data of a poisoned one.
pub(crate) fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}
