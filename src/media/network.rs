//! Where the peer connections listen and what they advertise: UDP ports (optionally from a
//! fixed range) and public addresses behind 1:1 NAT.
//!
//! The `webrtc` crate binds one UDP socket per configured address for every peer
//! connection (it has no single-port mux yet: `SettingEngine::with_udp_network` is a
//! to-do upstream). With port 0 the OS picks any ephemeral port, which a firewall or a
//! container's port mapping cannot follow; with a range, each connection gets a free port
//! from it, so the operator opens exactly that range.
//!
//! Behind 1:1 NAT (a cloud VM's public IP, a container host's IP) the bound address is not
//! the one browsers can reach. `rtc` 0.21.1 has `SettingEngine::with_nat_1to1_ips` but never
//! reads it, so the SFU rewrites its candidates itself ([`PublicAddresses`]): in the offer's
//! `a=candidate` lines and in trickled candidates. Checks sent to the public address reach the
//! bound socket through the NAT, and replies leave from it, so ICE needs nothing else.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

use super::MediaError;

/// Hands out ports from an inclusive range, round robin, skipping ports in use.
#[derive(Debug)]
pub(crate) struct PortAllocator {
    range: Option<(u16, u16)>,
    cursor: AtomicU32,
}

impl PortAllocator {
    /// `None`: leave port 0 to the OS.
    pub(crate) fn new(range: Option<(u16, u16)>) -> Self {
        Self {
            range: range.map(|(low, high)| (low.min(high), low.max(high))),
            cursor: AtomicU32::new(0),
        }
    }

    /// The addresses to bind for one new connection: `configured`, each port 0 replaced by a
    /// free port of the range (when there is a range). A port is "free" if it could be bound
    /// just now; the round robin keeps two joins from picking the same one.
    pub(crate) fn addresses(
        &self,
        configured: &[SocketAddr],
    ) -> Result<Vec<SocketAddr>, MediaError> {
        let Some((low, high)) = self.range else {
            return Ok(configured.to_vec());
        };
        let size = u32::from(high - low) + 1;
        configured
            .iter()
            .map(|addr| {
                if addr.port() != 0 {
                    return Ok(*addr);
                }
                for _ in 0..size {
                    let offset = self.cursor.fetch_add(1, Ordering::Relaxed) % size;
                    let port = u16::try_from(u32::from(low) + offset).unwrap_or(high);
                    let candidate = SocketAddr::new(addr.ip(), port);
                    if UdpSocket::bind(candidate).is_ok() {
                        return Ok(candidate);
                    }
                }
                Err(MediaError::PeerConnection(format!(
                    "no free UDP port in {low}-{high} on {}",
                    addr.ip()
                )))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A range of `n` ports that were free a moment ago (the OS picked the first).
    fn free_range(n: u16) -> (u16, u16) {
        for _ in 0..50 {
            let probe = UdpSocket::bind(loopback(0)).unwrap();
            let low = probe.local_addr().unwrap().port();
            drop(probe);
            if low.checked_add(n).is_some()
                && (low..low + n).all(|p| UdpSocket::bind(loopback(p)).is_ok())
            {
                return (low, low + n - 1);
            }
        }
        panic!("no free port range");
    }

    #[test]
    fn bound_addresses_are_advertised_as_public_ones() {
        let public: IpAddr = "203.0.113.7".parse().unwrap();
        let nat = PublicAddresses::new(&[loopback(0)], &[public]);
        let line = "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host";
        assert_eq!(
            nat.candidate(line),
            "candidate:1 1 udp 2130706431 203.0.113.7 5000 typ host"
        );
        let other = "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host";
        assert_eq!(nat.candidate(other), other);
        let sdp = format!("v=0\r\na=mid:0\r\na={line}\r\na=end-of-candidates\r\n");
        assert_eq!(
            nat.sdp(&sdp),
            "v=0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 203.0.113.7 5000 typ host\r\na=end-of-candidates\r\n"
        );
        let none = PublicAddresses::new(&[loopback(0)], &[]);
        assert_eq!(none.sdp(&sdp), sdp);
    }

    #[test]
    fn without_a_range_the_addresses_are_kept() {
        let ports = PortAllocator::new(None);
        assert_eq!(ports.addresses(&[loopback(0)]).unwrap(), vec![loopback(0)]);
    }

    #[test]
    fn ports_come_from_the_range_in_turn_and_fixed_ports_are_kept() {
        let (low, high) = free_range(3);
        let ports = PortAllocator::new(Some((low, high)));
        let first = ports.addresses(&[loopback(0), loopback(9)]).unwrap();
        assert_eq!(first, vec![loopback(low), loopback(9)]);
        let second = ports.addresses(&[loopback(0)]).unwrap();
        assert_eq!(second, vec![loopback(low + 1)]);
    }

    #[test]
    fn ports_in_use_are_skipped_and_a_full_range_is_an_error() {
        let (low, high) = free_range(2);
        let ports = PortAllocator::new(Some((low, high)));
        let _taken = UdpSocket::bind(loopback(low)).unwrap();
        assert_eq!(
            ports.addresses(&[loopback(0)]).unwrap(),
            vec![loopback(high)]
        );
        let _also_taken = UdpSocket::bind(loopback(high)).unwrap();
        assert!(ports.addresses(&[loopback(0)]).is_err());
    }
}

/// Which bound address is advertised as which public one.
#[derive(Debug, Clone, Default)]
pub(crate) struct PublicAddresses {
    map: Vec<(IpAddr, IpAddr)>,
}

impl PublicAddresses {
    /// Pairs `bound[i]` with `public[i]`; a single public address stands for every bound one.
    pub(crate) fn new(bound: &[SocketAddr], public: &[IpAddr]) -> Self {
        let map = match public {
            [] => Vec::new(),
            [one] => bound.iter().map(|addr| (addr.ip(), *one)).collect(),
            many => bound
                .iter()
                .zip(many.iter())
                .map(|(addr, public)| (addr.ip(), *public))
                .collect(),
        };
        Self { map }
    }

    /// A `candidate:` attribute value with its address replaced, if it is a bound one.
    pub(crate) fn candidate(&self, candidate: &str) -> String {
        if self.map.is_empty() {
            return candidate.to_owned();
        }
        let mut fields: Vec<String> = candidate.split(' ').map(str::to_owned).collect();
        if let Some(address) = fields.get_mut(4)
            && let Ok(ip) = address.parse::<IpAddr>()
            && let Some((_, public)) = self.map.iter().find(|(bound, _)| *bound == ip)
        {
            *address = public.to_string();
        }
        fields.join(" ")
    }

    /// An SDP with every `a=candidate:` line rewritten by [`candidate`](Self::candidate).
    pub(crate) fn sdp(&self, sdp: &str) -> String {
        if self.map.is_empty() {
            return sdp.to_owned();
        }
        sdp.split_inclusive('\n')
            .map(|line| match line.strip_prefix("a=") {
                Some(rest) if rest.starts_with("candidate:") => {
                    let body = rest.trim_end_matches(['\r', '\n']);
                    let ending = &rest[body.len()..];
                    format!("a={}{ending}", self.candidate(body))
                }
                _ => line.to_owned(),
            })
            .collect()
    }
}
