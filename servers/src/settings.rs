//! A service's settings as one typed value, whichever way they come in (the config file,
//! the management API's body or query string, a stored manifest entry, another node's
//! entry), checked in one place; and the patch a change makes to them (what it leaves out,
//! the service keeps). A leaf beside [`crate::spec`].

use frenezulo_core::{RouteError, ServiceRoute};
use thiserror::Error;

use crate::guest::{GuestConfig, GuestError};
use crate::spec::{EnvError, EnvValues, LimitError, LimitsConfig, check_env};

/// What a service runs with, beside its module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSettings {
    /// The paths it owns; `/NAME/...` when unset.
    pub route: Option<ServiceRoute>,
    /// The limits set for it; unset keys follow the server's `[limits]`.
    pub limits: LimitsConfig,
    /// Environment values for its guests.
    pub env: EnvValues,
    /// The export run for its own route; `_start` when unset.
    pub entrypoint: Option<String>,
    /// Its argv template; WAGI's default when unset.
    pub argv: Option<String>,
    /// Origins its guests may call over HTTP.
    pub allowed_hosts: Vec<String>,
    /// Its outbound calls in flight at once, at most.
    pub http_max_concurrency: Option<usize>,
}

/// Why settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A limit is out of its range.
    #[error("limits: {0}")]
    Limits(#[from] LimitError),
    /// An environment name or value cannot be used.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The route is not one.
    #[error("route: {0}")]
    Route(#[from] RouteError),
    /// The entrypoint, argv template or outbound grant cannot be used.
    #[error(transparent)]
    Guest(#[from] GuestError),
}

impl ServiceSettings {
    /// Refuses what no service may have: limits beyond their ceilings, environment names a
    /// guest cannot use, bad names, templates or hosts.
    pub fn check(&self) -> Result<(), SettingsError> {
        self.limits.check()?;
        check_env(&self.env)?;
        Ok(self.guest().check()?)
    }

    /// Its route, entrypoint, argv template and outbound grant, as the guest runs with
    /// them (no volumes: only the config file gives those).
    pub fn guest(&self) -> GuestConfig {
        GuestConfig {
            route: self.route.clone(),
            default_host: None,
            entrypoint: self.entrypoint.clone(),
            argv: self.argv.clone(),
            volumes: Default::default(),
            allowed_hosts: self.allowed_hosts.clone(),
            http_max_concurrency: self.http_max_concurrency,
        }
    }
}

/// What a change asks of a service's settings; what it leaves out, the service keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    /// A new route.
    pub route: Option<ServiceRoute>,
    /// Limits whose keys replace those set before (the rest stay).
    pub limits: Option<LimitsConfig>,
    /// A whole new environment (empty clears it).
    pub env: Option<EnvValues>,
    /// A new entrypoint.
    pub entrypoint: Option<String>,
    /// A new argv template.
    pub argv: Option<String>,
    /// A whole new list of hosts.
    pub allowed_hosts: Option<Vec<String>>,
    /// A new bound on outbound calls.
    pub http_max_concurrency: Option<usize>,
}

impl SettingsPatch {
    /// `old` with this patch applied.
    pub fn over(&self, old: &ServiceSettings) -> ServiceSettings {
        ServiceSettings {
            route: self.route.clone().or_else(|| old.route.clone()),
            limits: self
                .limits
                .as_ref()
                .map_or_else(|| old.limits.clone(), |given| given.over(&old.limits)),
            env: self.env.clone().unwrap_or_else(|| old.env.clone()),
            entrypoint: self.entrypoint.clone().or_else(|| old.entrypoint.clone()),
            argv: self.argv.clone().or_else(|| old.argv.clone()),
            allowed_hosts: self
                .allowed_hosts
                .clone()
                .unwrap_or_else(|| old.allowed_hosts.clone()),
            http_max_concurrency: self.http_max_concurrency.or(old.http_max_concurrency),
        }
    }

    /// Checks what the patch gives, before any work is done for it (what it keeps of a
    /// service is checked again when applied).
    pub fn check(&self) -> Result<(), SettingsError> {
        self.over(&ServiceSettings::default()).check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(pairs: &[(&str, &str)]) -> LimitsConfig {
        LimitsConfig::from_pairs(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn a_patch_replaces_what_it_gives_and_keeps_the_rest() {
        let old = ServiceSettings {
            route: Some(ServiceRoute::prefix("/api").unwrap()),
            limits: limits(&[("memory", "32MiB"), ("queue", "4")]),
            env: [("A".to_owned(), "1".to_owned())].into(),
            entrypoint: Some("main".to_owned()),
            argv: None,
            allowed_hosts: vec!["https://a.example".to_owned()],
            http_max_concurrency: Some(2),
        };
        assert_eq!(SettingsPatch::default().over(&old), old, "nothing given");
        let patch = SettingsPatch {
            limits: Some(limits(&[("queue", "8")])),
            env: Some(EnvValues::new()),
            allowed_hosts: Some(vec!["https://b.example".to_owned()]),
            ..SettingsPatch::default()
        };
        let new = patch.over(&old);
        assert_eq!(
            new.limits,
            limits(&[("memory", "32MiB"), ("queue", "8")]),
            "limit keys merge"
        );
        assert!(new.env.is_empty(), "the environment is replaced whole");
        assert_eq!(new.allowed_hosts, ["https://b.example"]);
        assert_eq!((new.route, new.entrypoint), (old.route, old.entrypoint));
    }

    #[test]
    fn every_part_is_checked() {
        let bad = [
            SettingsPatch {
                limits: Some(limits(&[("memory", "8GiB")])),
                ..SettingsPatch::default()
            },
            SettingsPatch {
                env: Some([("QUERY_STRING".to_owned(), "x".to_owned())].into()),
                ..SettingsPatch::default()
            },
            SettingsPatch {
                entrypoint: Some(String::new()),
                ..SettingsPatch::default()
            },
            SettingsPatch {
                allowed_hosts: Some(vec!["ftp://x".to_owned()]),
                ..SettingsPatch::default()
            },
            SettingsPatch {
                http_max_concurrency: Some(0),
                ..SettingsPatch::default()
            },
        ];
        for patch in bad {
            assert!(patch.check().is_err(), "{patch:?}");
        }
        assert!(matches!(
            SettingsPatch {
                env: Some([("1X".to_owned(), "x".to_owned())].into()),
                ..SettingsPatch::default()
            }
            .check(),
            Err(SettingsError::Env(EnvError::BadName(_)))
        ));
        assert_eq!(SettingsPatch::default().check(), Ok(()));
    }
}
