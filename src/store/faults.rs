//! What can go wrong with the files under GENESIS_HOME, said so a person can
//! act on it: a full file system, and a store file that is not a redb
//! database any more (overwritten, cut short).
//!
//! Design:
//! - **Full.** An I/O error with `ENOSPC` (or `EDQUOT`) anywhere genesis
//!   writes under its home becomes [`GenesisError::HomeFull`], naming the
//!   home and what was being written. redb commits are atomic, so what was
//!   committed before is intact and readable once space is freed; the error
//!   says so. libgit2 reports no errno, only the system's message, so git
//!   errors are recognised by that text.
//! - **Damaged.** redb trusts a file it shut down cleanly and may panic
//!   (debug builds assert) on one altered since. Opening is therefore
//!   guarded: a panic is caught with [`std::panic::catch_unwind`], its
//!   message kept out of stderr by a panic hook that is quiet only on the
//!   guarded thread, and reported like redb's own "corrupted" and "not a
//!   database" errors, as [`GenesisError::StoreDamaged`] with the fix:
//!   move the file aside (genesis then starts a new store) and recover
//!   results from exports and sandbox archives.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use crate::errors::GenesisError;

/// The text the C library gives `ENOSPC`; libgit2 errors carry only this.
const NO_SPACE_TEXT: &str = "No space left on device";

/// Whether an I/O error means the file system (or the user's quota) is full.
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == std::io::ErrorKind::StorageFull
}

/// `err`, as [`GenesisError::HomeFull`] naming `home` when it was caused by
/// a full file system; any other error unchanged.
pub fn home_full_or(err: GenesisError, home: &Path) -> GenesisError {
    let full = |context: String| GenesisError::HomeFull {
        home: home.to_path_buf(),
        context,
    };
    match err {
        GenesisError::Io { context, source } if is_no_space(&source) => full(context),
        GenesisError::Git { context, cause } if cause.message().contains(NO_SPACE_TEXT) => {
            full(format!("git: {context}"))
        }
        GenesisError::PatchFailed(message) if message.contains(NO_SPACE_TEXT) => {
            full("applying the patch".into())
        }
        other => other,
    }
}

/// A redb error on the store at `path`, classified: full home, damaged
/// file, or a plain store error.
pub(super) fn store_error(path: &Path, e: impl Into<redb::Error>) -> GenesisError {
    let e: redb::Error = e.into();
    match &e {
        redb::Error::Io(io) if is_no_space(io) => GenesisError::HomeFull {
            home: home_of(path).to_path_buf(),
            context: format!("writing the store {}", path.display()),
        },
        redb::Error::Corrupted(problem) => damaged(path, problem),
        redb::Error::Io(io) if is_damage(io) => damaged(path, &io.to_string()),
        _ => GenesisError::Store {
            path: path.to_path_buf(),
            cause: Box::new(e),
        },
    }
}

/// I/O errors redb gives for a file that is not (any more) one of its
/// databases: bad magic or header ("invalid data"), or shorter than its
/// header says ("unexpected end of file").
fn is_damage(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
    )
}

/// The home a store file lives in (`GENESIS_HOME/genesis.redb`).
fn home_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// [`GenesisError::StoreDamaged`] for `path`, with the way out.
pub fn damaged(path: &Path, problem: &str) -> GenesisError {
    let aside = format!("{}.damaged", path.display());
    GenesisError::StoreDamaged {
        path: path.to_path_buf(),
        problem: problem.trim().to_owned(),
        fix: format!(
            "Move it aside (`mv {} {aside}`; keep it for inspection) and genesis starts a new, empty store; \
             the experiments it held can be reloaded from earlier exports (`genesis export` files) \
             and their sandboxes from the archives in {}",
            path.display(),
            crate::home::Home::of(home_of(path)).archives().display()
        ),
    }
}

thread_local! {
    /// `Some` while this thread runs [`guarded`]: the caught panic's message.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

static QUIET_HOOK: Once = Once::new();

/// Installs (once per process) a panic hook that records the message of a
/// panic on a thread inside [`guarded`] instead of printing it, and leaves
/// every other panic to the hook that was there before.
fn install_quiet_hook() {
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = panic_message(info);
            let kept = CAUGHT.with(|caught| match caught.borrow_mut().as_mut() {
                Some(slot) => {
                    *slot = message;
                    true
                }
                None => false,
            });
            if !kept {
                previous(info);
            }
        }));
    });
}

fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    match info.location() {
        Some(at) => format!("{text} (at {}:{})", at.file(), at.line()),
        None => text,
    }
}

/// Runs `f`; a panic inside it comes back as `Err` with its message, and is
/// not printed.
pub(super) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_quiet_hook();
    CAUGHT.with(|caught| *caught.borrow_mut() = Some(String::new()));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    let message = CAUGHT.with(|caught| caught.borrow_mut().take());
    outcome.map_err(|_| message.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_names_the_home_and_what_was_written() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let err = home_full_or(
            GenesisError::io("writing request.json", io),
            Path::new("/h"),
        );
        let text = err.to_string();
        assert!(
            text.starts_with(
                "GENESIS_HOME /h is full (No space left on device) while writing request.json"
            ),
            "{text}"
        );
        let other = GenesisError::io("x", std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(
            home_full_or(other, Path::new("/h")),
            GenesisError::Io { .. }
        ));
        let git = GenesisError::git(
            "writing an object",
            git2::Error::from_str("failed: No space left on device"),
        );
        assert!(matches!(
            home_full_or(git, Path::new("/h")),
            GenesisError::HomeFull { .. }
        ));
    }

    #[test]
    fn redb_errors_are_classified() {
        let path = Path::new("/h/genesis.redb");
        let full = store_error(path, std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(
            full.to_string().contains("GENESIS_HOME /h is full"),
            "{full}"
        );
        let bad = store_error(path, redb::StorageError::Corrupted("bad checksum".into()));
        let text = bad.to_string();
        assert!(
            text.contains("store /h/genesis.redb is damaged: bad checksum"),
            "{text}"
        );
        assert!(
            text.contains("mv /h/genesis.redb /h/genesis.redb.damaged"),
            "{text}"
        );
        assert!(text.contains("/h/archives"), "{text}");
        let busy = store_error(path, redb::DatabaseError::DatabaseAlreadyOpen);
        assert!(matches!(busy, GenesisError::Store { .. }));
    }

    #[test]
    fn a_guarded_panic_is_an_error_with_its_message() {
        let caught = guarded(|| -> u32 { panic!("page 7 is garbage") }).unwrap_err();
        assert!(caught.contains("page 7 is garbage"), "{caught}");
        assert_eq!(guarded(|| 5).unwrap(), 5);
    }
}
