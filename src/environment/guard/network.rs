//! The Docker network installs run on: made on demand, the same one for
//! every genesis process and home on an engine.
//!
//! Its bridge interface has a fixed name (`com.docker.network.bridge.name`)
//! so the guard's rules can name it before any install exists. Creating it
//! is race-safe: the engine's bridge driver refuses a second network with
//! the same bridge name under its own lock, so of two processes creating at
//! once one succeeds and the other finds the winner's network.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::models::NetworkCreateRequest;
use bollard::Docker;

use crate::errors::engine::{classify, EngineFailure};

/// The network's name and its bridge interface's (at most 15 bytes).
pub const NETWORK: &str = "genesis-install";
pub const BRIDGE: &str = "gns-install";
/// Marks the network as genesis's own: one of that name without it is
/// someone else's, and genesis will not put installs on it.
pub const LABEL: &str = "genesis.network";
const LABEL_VALUE: &str = "install";

/// What the guard needs to know of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallNetwork {
    pub name: String,
    pub bridge: String,
    /// The host's address on the bridge (its gateway).
    pub gateway: Option<Ipv4Addr>,
    pub subnet: Option<String>,
}

/// The install network, created when missing; Err names what is wrong.
pub async fn ensure(docker: &Docker) -> Result<InstallNetwork, String> {
    if let Some(found) = inspect(docker).await? {
        return Ok(found);
    }
    let request = NetworkCreateRequest {
        name: NETWORK.into(),
        driver: Some("bridge".into()),
        internal: Some(false),
        attachable: Some(false),
        enable_ipv6: Some(false),
        labels: Some(HashMap::from([(LABEL.into(), LABEL_VALUE.into())])),
        options: Some(HashMap::from([
            ("com.docker.network.bridge.name".into(), BRIDGE.into()),
            // Docker's own rule against traffic between the bridge's
            // containers, beside the guard's.
            (
                "com.docker.network.bridge.enable_icc".into(),
                "false".into(),
            ),
            (
                "com.docker.network.bridge.enable_ip_masquerade".into(),
                "true".into(),
            ),
        ])),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(_) => {}
        // Another process made it first (same name, or same bridge name):
        // the inspect below finds it.
        Err(e) if classify(&e) == EngineFailure::Conflict => {}
        Err(e) => return Err(format!("creating Docker network {NETWORK}: {e}")),
    }
    inspect(docker)
        .await?
        .ok_or_else(|| format!("Docker network {NETWORK} was created but cannot be found"))
}

/// The network if it exists and is genesis's; Err if one of that name is not.
pub async fn inspect(docker: &Docker) -> Result<Option<InstallNetwork>, String> {
    let found = match docker.inspect_network(NETWORK, None).await {
        Ok(found) => found,
        Err(e) if classify(&e).is_absent() => return Ok(None),
        Err(e) => return Err(format!("inspecting Docker network {NETWORK}: {e}")),
    };
    let labelled = found
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL))
        .is_some_and(|v| v == LABEL_VALUE);
    let bridge = found
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name"))
        .cloned()
        .unwrap_or_default();
    if !labelled || bridge != BRIDGE || found.driver.as_deref() != Some("bridge") {
        return Err(format!(
            "a Docker network named {NETWORK} exists that genesis did not make (no label \
             {LABEL}={LABEL_VALUE} or not on bridge {BRIDGE}); remove it (`docker network rm \
             {NETWORK}`) and genesis makes its own"
        ));
    }
    let config = found.ipam.and_then(|i| i.config).and_then(|c| {
        c.into_iter()
            .find(|c| c.subnet.as_deref().is_some_and(|s| !s.contains(':')))
    });
    Ok(Some(InstallNetwork {
        name: NETWORK.into(),
        bridge,
        gateway: config
            .as_ref()
            .and_then(|c| c.gateway.as_deref())
            .and_then(|g| g.parse().ok()),
        subnet: config.and_then(|c| c.subnet),
    }))
}
