//! The client's address behind a reverse proxy. `X-Forwarded-For` is believed only when the
//! connection comes from a proxy the operator named (`NEULBI_TRUSTED_PROXIES`); otherwise
//! anyone could pick the address the sign-in rate limiter counts them under.

use std::net::IpAddr;

/// The proxies whose `X-Forwarded-For` is believed (`trusted_proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<IpAddr>);

impl TrustedProxies {
    /// The client address: the peer itself, or, when the peer is a trusted proxy, the
    /// right-most address in `forwarded_for` that is not a trusted proxy (the one the
    /// nearest untrusted hop connected from). Malformed entries end the walk.
    pub fn client(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = peer?;
        if !self.0.contains(&peer) {
            return Some(peer);
        }
        let Some(header) = forwarded_for else {
            return Some(peer);
        };
        let mut client = peer;
        // Bounded: a header of thousands of hops is not a chain of proxies.
        for hop in header.rsplit(',').take(32) {
            let Some(ip) = parse_hop(hop) else {
                break;
            };
            client = ip;
            if !self.0.contains(&ip) {
                break;
            }
        }
        Some(client)
    }
}

/// One `X-Forwarded-For` entry: an IP, an `IP:port` or a bracketed IPv6 with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (ip, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse().ok()
}

/// Reads `NEULBI_TRUSTED_PROXIES` (comma-separated IP addresses).
pub fn parse_list(v: &str) -> Result<Vec<IpAddr>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("{s:?} is not an IP address (CIDR ranges are not supported)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let none = TrustedProxies::default();
        let nginx = TrustedProxies(vec![ip("127.0.0.1"), ip("10.0.0.2")]);
        let peer = Some(ip("127.0.0.1"));
        // Not trusted: the header is ignored, whatever it says.
        assert_eq!(none.client(peer, Some("1.2.3.4")), peer);
        assert_eq!(
            nginx.client(Some(ip("5.6.7.8")), Some("1.2.3.4")),
            Some(ip("5.6.7.8"))
        );
        // Trusted: the right-most untrusted hop; what the client wrote on the left is ignored.
        assert_eq!(
            nginx.client(peer, Some("9.9.9.9, 1.2.3.4")),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            nginx.client(peer, Some("1.2.3.4, 10.0.0.2")),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            nginx.client(peer, Some("[2001:db8::1]:4711")),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(nginx.client(peer, Some("1.2.3.4:80")), Some(ip("1.2.3.4")));
        // Garbage ends the walk at the last good hop.
        assert_eq!(nginx.client(peer, Some("1.2.3.4, bogus")), peer);
        assert_eq!(nginx.client(peer, None), peer);
        assert_eq!(nginx.client(None, Some("1.2.3.4")), None);
        assert_eq!(
            parse_list(" 127.0.0.1, ::1 ,").expect("list"),
            vec![ip("127.0.0.1"), ip("::1")]
        );
        assert!(parse_list("10.0.0.0/8").expect_err("cidr").contains("CIDR"));
    }

    proptest! {
        #[test]
        fn any_header_yields_the_peer_or_an_address_written_in_it(header in ".{0,200}") {
            let nginx = TrustedProxies(vec![ip("127.0.0.1")]);
            let peer = ip("127.0.0.1");
            let got = nginx.client(Some(peer), Some(&header)).expect("an address");
            prop_assert!(got == peer || header.contains(&got.to_string()) || header.contains(':'));
        }
    }
}
