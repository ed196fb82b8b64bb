//! The install's disk cap (`[environments] disk_mb`).
//!
//! A test run writes into a file system of its own whose size the kernel
//! enforces (`sandbox::disk`). An install cannot: what it writes must land
//! in the container's writable layer, because that layer becomes the
//! environment's image, and this engine's storage driver has no quota for
//! it. So a watchdog measures the layer from outside, through the engine
//! (`inspect --size`, the same number `docker ps -s` shows), every
//! `disk_check_ms`, and kills the install once it is past the cap.
//!
//! The bound is honest, not exact: an install can pass the cap by what it
//! writes between two measurements plus the time one measurement takes
//! (the engine walks the layer's files), e.g. about 1 GB at 1 GB/s with
//! the default 1000 ms. The cap counts apparent sizes (a sparse file
//! counts whole), so a hole cannot hide bytes. `/tmp` of the install is a
//! tmpfs of `[sandbox] tmp_mb` (memory), not part of the layer.

use std::time::Duration;

use crate::sandbox::Sandbox;

const MB: u64 = 1024 * 1024;

/// The last word, after the install ended and before its layer is
/// committed: an install that wrote past the cap and ended between two
/// measurements is caught here, so no image over the cap is ever made.
pub async fn layer_within_cap(sandbox: &Sandbox, cap_mb: u64) -> Result<(), String> {
    if cap_mb == 0 {
        return Ok(());
    }
    match sandbox.layer_size().await {
        Ok(Some(bytes)) if bytes > cap_mb.saturating_mul(MB) => Err(format!(
            "wrote {} MB into the layer that becomes its image, past the {cap_mb} MB cap \
             ([environments] disk_mb); no image was made",
            bytes / MB
        )),
        _ => Ok(()),
    }
}

/// Resolves with the reason once the sandbox's writable layer is past
/// `cap_mb` (never when `cap_mb` is 0, nor while the engine does not say).
pub async fn layer_past_cap(sandbox: &Sandbox, cap_mb: u64, every: Duration) -> String {
    if cap_mb == 0 {
        return std::future::pending().await;
    }
    let cap = cap_mb.saturating_mul(MB);
    let mut warned = false;
    loop {
        tokio::time::sleep(every).await;
        match sandbox.layer_size().await {
            Ok(Some(bytes)) if bytes > cap => {
                return format!(
                    "wrote {} MB into the layer that becomes its image, past the {cap_mb} MB cap \
                     ([environments] disk_mb), and was killed (measured every {} ms, \
                     [environments] disk_check_ms, so it may pass the cap by what it writes in \
                     that time)",
                    bytes / MB,
                    every.as_millis()
                );
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) if warned => {}
            Ok(None) => {
                warned = true;
                tracing::warn!(container = %sandbox.name, "the engine reports no writable-layer size: the install's disk cap is not enforced");
            }
            Err(e) => {
                warned = true;
                tracing::warn!(container = %sandbox.name, error = %e, "measuring the install's writable layer failed; will try again");
            }
        }
    }
}
