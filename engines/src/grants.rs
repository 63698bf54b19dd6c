//! What the operator grants a service's guests beyond the request: read-only directories
//! and outbound HTTP calls. The core carries them in `GuestSetup::host` without looking
//! inside ([`frenezulo_core::HostGrants`]); the engines read them here. A leaf.

use std::sync::Arc;

use frenezulo_core::{GuestSetup, HostGrants};

/// A service's grants, as the driver fills them in: one per serving thread, so requests
/// touch no reference count another core writes (but for the outbound counter, which is a
/// server-wide limit).
#[derive(Debug, Default)]
pub struct Grants {
    /// Directories the guest may read, as WASI preopens.
    pub volumes: Vec<Volume>,
    /// Outbound HTTP, if granted.
    pub outbound: Option<OutboundGrant>,
}

impl Grants {
    /// The grants `setup` carries, if any.
    pub fn of(setup: &GuestSetup) -> Option<&Grants> {
        setup.host.as_ref()?.downcast_ref()
    }

    /// As the core carries them; `None` when nothing is granted.
    pub fn into_host(self) -> Option<HostGrants> {
        let granted = !self.volumes.is_empty() || self.outbound.is_some();
        granted.then(|| Arc::new(self) as HostGrants)
    }
}

/// A host directory a guest may read, opened once by the operator's side.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Where the guest sees it: an absolute guest path such as `/static`.
    pub guest_path: String,
    /// The directory, opened read-only; every path a guest names is resolved beneath it.
    pub dir: Arc<std::fs::File>,
}

/// What a service's guests may call over HTTP (WAGI's `allowed_hosts` and
/// `http_max_concurrency`), and how many of its calls are out right now, server-wide.
#[derive(Debug)]
pub struct OutboundGrant {
    /// The origins allowed, each `scheme://host:port` in lower case; `None` allows any
    /// (WAGI's `insecure:allow-all`).
    pub allowed: Option<Vec<String>>,
    /// Most calls of this service in flight at once, all serving threads together.
    pub max_in_flight: usize,
    /// Calls in flight now, shared by every serving thread's copy of the grant.
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Whether calls may connect to public addresses only, whatever a host name resolves
    /// to: the operator's ceiling allowed these origins as public hosts.
    pub public_only: bool,
}
