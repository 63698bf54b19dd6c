//! Name resolution for the HTTP calls the server makes for others: guests' outbound calls
//! and module fetches. An IP literal is resolved on the spot, a name as ureq does; where the
//! operator's ceiling allowed a host only as a public one, the call connects to public
//! addresses only, whatever its name resolves to (so a name pointing at 127.0.0.1 or
//! 169.254.169.254 reaches nothing), and the addresses checked are the ones connected to.
//!
//! What counts as local is here too ([`is_local_host`], [`is_local_ip`]), for the ceilings'
//! checks of origins as written.
//!
//! (`unversioned` is ureq's API outside semver: a minor ureq release may need this adapted.)

use std::net::{IpAddr, SocketAddr};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Resolves an IP literal itself (ureq's own resolver spawns a thread per lookup when a
/// call has a time limit, literals included: a third of a loopback call's cost), names
/// through ureq; with `public_only`, drops every local address.
#[derive(Debug, Default)]
pub struct CallResolver {
    names: DefaultResolver,
    /// Set to the ceiling's setting name when only public addresses may be used.
    public_only: Option<&'static str>,
}

impl CallResolver {
    /// A resolver that connects anywhere a name resolves to.
    pub fn any() -> Self {
        Self::default()
    }

    /// A resolver that connects only to public addresses; `key` names the setting that
    /// would allow more, for the error.
    pub fn public_only(key: &'static str) -> Self {
        Self {
            public_only: Some(key),
            ..Self::default()
        }
    }
}

impl Resolver for CallResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let literal = uri.host().and_then(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        });
        let port = uri.port_u16().or(match uri.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        });
        let found = match (literal, port) {
            (Some(ip), Some(port)) => {
                let mut addrs = self.empty();
                addrs.push(SocketAddr::new(ip, port));
                addrs
            }
            _ => self.names.resolve(uri, config, timeout)?,
        };
        let Some(key) = self.public_only else {
            return Ok(found);
        };
        let mut public = self.empty();
        for addr in found.iter().filter(|a| !is_local_ip(a.ip())) {
            public.push(*addr);
        }
        if public.is_empty() {
            let host = uri.host().unwrap_or_default();
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "`{host}` resolves only to loopback, private, link-local or otherwise local addresses; the server's `{key}` must list it"
                ),
            )));
        }
        Ok(public)
    }
}

/// Whether `host` (lower case) names this machine or a network that is not the public
/// internet: `localhost` and `*.localhost`, loopback, private, link-local, shared (CGNAT),
/// unspecified, broadcast and multicast addresses, in IPv4 and IPv6 (IPv4-mapped,
/// -compatible and NAT64 forms included). A name whose last label starts with a digit
/// but is no plain dotted IPv4 address (`127.1`, `0x7f.1`, `2130706433`) counts as local:
/// resolvers read those as addresses.
pub fn is_local_host(host: &str) -> bool {
    use std::net::{IpAddr, Ipv6Addr};
    let host = host.trim_end_matches('.');
    if host.is_empty() || host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if host.contains(':') {
        // Only an IPv6 address has a colon in its host; anything else (`localhost:80`
        // from `http://localhost:80:80`) is too ambiguous to call public.
        return host
            .parse::<Ipv6Addr>()
            .map_or(true, |ip| is_local_ip(ip.into()));
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => is_local_ip(ip),
        Err(_) => host
            .rsplit('.')
            .next()
            .is_some_and(|last| last.starts_with(|c: char| c.is_ascii_digit())),
    }
}

/// Whether `ip` is an address of this machine or of a network that is not the public
/// internet (see [`is_local_host`]).
pub fn is_local_ip(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    fn v4(ip: Ipv4Addr) -> bool {
        let [a, b, ..] = ip.octets();
        a == 0
            || a == 127
            || a == 10
            || (a == 172 && (16..32).contains(&b))
            || (a == 192 && b == 168)
            || (a == 169 && b == 254)
            || (a == 100 && (64..128).contains(&b))
            || ip.is_broadcast()
            || ip.is_multicast()
    }
    fn v6(ip: Ipv6Addr) -> bool {
        let s = ip.segments();
        let embedded = Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32);
        s[..6] == [0; 6] // ::, ::1 and IPv4-compatible
            || (s[..5] == [0; 5] && s[5] == 0xffff && v4(embedded)) // IPv4-mapped
            || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && v4(embedded)) // NAT64
            || (s[0] & 0xfe00) == 0xfc00 // unique local
            || (s[0] & 0xffc0) == 0xfe80 // link-local
            || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
            || ip.is_multicast()
    }
    match ip {
        IpAddr::V4(ip) => v4(ip),
        IpAddr::V6(ip) => v6(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(r: &CallResolver, url: &str) -> Result<Vec<SocketAddr>, String> {
        let uri: ureq::http::Uri = url.parse().unwrap();
        let config = ureq::config::Config::default();
        r.resolve(&uri, &config, NextTimeout::default())
            .map(|a| a.to_vec())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn literals_resolve_on_the_spot() {
        let any = CallResolver::any();
        assert_eq!(
            resolve(&any, "http://127.0.0.1:8080/x").unwrap(),
            ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            resolve(&any, "https://[::1]/").unwrap(),
            ["[::1]:443".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn public_only_refuses_names_that_resolve_to_local_addresses() {
        let strict = CallResolver::public_only("outbound_allowed_hosts");
        // `localhost` resolves through the system resolver (its hosts file) to loopback.
        let e = resolve(&strict, "http://localhost:8080/").unwrap_err();
        assert!(e.contains("`localhost` resolves only to loopback"), "{e}");
        assert!(e.contains("`outbound_allowed_hosts` must list it"), "{e}");
        assert!(resolve(&strict, "http://169.254.169.254/").is_err());
        assert!(resolve(&CallResolver::any(), "http://localhost:8080/").is_ok());
        assert_eq!(
            resolve(&strict, "http://93.184.215.14/").unwrap(),
            ["93.184.215.14:80".parse::<SocketAddr>().unwrap()]
        );
    }
}
