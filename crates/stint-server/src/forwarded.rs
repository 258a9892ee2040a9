//! Behind a reverse proxy: the client's address from `Forwarded` (RFC 7239)
//! or `X-Forwarded-For`, believed only from the proxies the operator named.
//!
//! The operator names the one header the proxies set ([`ForwardedHeader`]):
//! proxies pass the other through as the client sent it, so reading it
//! would let a client choose its address. A request from a trusted proxy is
//! attributed to the nearest address in that header's chain that is not
//! itself a trusted proxy (reading right to left: the left end is whatever
//! the client chose to send). A request from any other peer that carries
//! the header is refused: it is either a client trying to choose its own
//! address, or a proxy the operator forgot to name, and both should be
//! loud. With no trusted proxy the headers mean nothing and are ignored.
//! Every address the per-source limits, the request log and the audit see
//! is the result.

use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// Hops read from a chain at most; a longer chain is refused.
const MAX_HOPS: usize = 32;

/// One network, `ADDRESS/PREFIX` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parse `10.0.0.0/8`, `fd00::/8` or `192.0.2.7`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or ADDRESS/PREFIX network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {max}"))?,
        };
        if prefix == 0 {
            return Err(format!(
                "{text:?} trusts every address: any client could then choose its own address"
            ));
        }
        // An IPv4-mapped network is its IPv4 network (addresses are
        // compared that way).
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let network = Self { addr, prefix };
        if network.masked(addr) != addr {
            return Err(format!(
                "{text:?} has host bits set: did you mean {}/{prefix}?",
                network.masked(addr)
            ));
        }
        Ok(network)
    }

    fn masked(&self, addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    /// Whether `addr` is in this network (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        addr.is_ipv4() == self.addr.is_ipv4() && self.masked(addr) == self.addr
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// The header the trusted proxies set (they pass the other through).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, cloud load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded`, RFC 7239.
    Forwarded,
}

/// The proxies whose forwarding header is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<Network>,
    header: ForwardedHeader,
    /// Serve only connections from these proxies (TLS ends there: what
    /// arrives from anywhere else is in the clear).
    exclusive: bool,
}

/// Why a request's forwarding headers were refused. Safe to show the
/// client: it names no address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedError {
    /// The peer is not a trusted proxy, yet sent the forwarding header.
    Untrusted,
    /// A header that does not parse, or too long a chain.
    Malformed,
}

impl ForwardedError {
    /// What went wrong, for the client.
    pub fn description(self) -> &'static str {
        match self {
            Self::Untrusted => {
                "a forwarding header (X-Forwarded-For or Forwarded) is accepted only from the broker's trusted proxies"
            }
            Self::Malformed => "the Forwarded or X-Forwarded-For header does not parse",
        }
    }
}

impl TrustedProxies {
    /// The proxies in `networks`, which set `header`.
    pub fn new(networks: Vec<Network>, header: ForwardedHeader) -> Self {
        Self {
            networks,
            header,
            exclusive: false,
        }
    }

    /// These proxies, and connections from no one else.
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }

    /// Whether a connection from `peer` is served at all.
    pub fn admits(&self, peer: IpAddr) -> bool {
        !self.exclusive || self.trusts(peer)
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// The networks, for the banner and the docs.
    pub fn networks(&self) -> &[Network] {
        &self.networks
    }

    /// Whether `addr` is a trusted proxy.
    pub fn trusts(&self, addr: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(addr))
    }

    /// The address a request from `peer` with `headers` is attributed to.
    /// The port of a forwarded client is unknown: 0.
    pub fn client(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<SocketAddr, ForwardedError> {
        if self.networks.is_empty() {
            return Ok(peer);
        }
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        let values: Vec<_> = headers.get_all(name).iter().collect();
        if values.is_empty() {
            return Ok(peer);
        }
        if !self.trusts(peer.ip()) {
            return Err(ForwardedError::Untrusted);
        }
        let chain = match self.header {
            ForwardedHeader::XForwardedFor => x_forwarded_chain(&values)?,
            ForwardedHeader::Forwarded => forwarded_chain(&values)?,
        };
        if chain.len() > MAX_HOPS {
            return Err(ForwardedError::Malformed);
        }
        // Right to left: the first hop no trusted proxy vouches for is the
        // client; if every hop is trusted, the left-most.
        let mut client = peer.ip();
        for hop in chain.iter().rev() {
            client = *hop;
            if !self.trusts(*hop) {
                break;
            }
        }
        Ok(SocketAddr::new(canonical(client), 0))
    }
}

fn x_forwarded_chain(values: &[&http::HeaderValue]) -> Result<Vec<IpAddr>, ForwardedError> {
    let mut chain = Vec::new();
    for value in values {
        let text = value.to_str().map_err(|_| ForwardedError::Malformed)?;
        for hop in text.split(',') {
            chain.push(node_address(hop.trim()).ok_or(ForwardedError::Malformed)?);
            if chain.len() > MAX_HOPS {
                return Err(ForwardedError::Malformed);
            }
        }
    }
    Ok(chain)
}

/// RFC 7239: `Forwarded: for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"`.
/// Each element must name its `for`; an obfuscated or `unknown` node is
/// refused (it cannot be attributed or limited).
fn forwarded_chain(values: &[&http::HeaderValue]) -> Result<Vec<IpAddr>, ForwardedError> {
    let mut chain = Vec::new();
    for value in values {
        let text = value.to_str().map_err(|_| ForwardedError::Malformed)?;
        for element in split_outside_quotes(text, ',') {
            let mut node = None;
            for pair in split_outside_quotes(element, ';') {
                let Some((name, value)) = pair.trim().split_once('=') else {
                    return Err(ForwardedError::Malformed);
                };
                if name.trim().eq_ignore_ascii_case("for") {
                    if node.is_some() {
                        return Err(ForwardedError::Malformed);
                    }
                    let value = value.trim();
                    let value = match value.strip_prefix('"') {
                        Some(quoted) => {
                            quoted.strip_suffix('"').ok_or(ForwardedError::Malformed)?
                        }
                        None => value,
                    };
                    node = Some(node_address(value).ok_or(ForwardedError::Malformed)?);
                }
            }
            chain.push(node.ok_or(ForwardedError::Malformed)?);
            if chain.len() > MAX_HOPS {
                return Err(ForwardedError::Malformed);
            }
        }
    }
    Ok(chain)
}

/// Split on `sep` where it is not inside a quoted string.
fn split_outside_quotes(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(text.get(start..i).unwrap_or_default());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(text.get(start..).unwrap_or_default());
    parts
}

/// `192.0.2.60`, `192.0.2.60:4711`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:4711`.
fn node_address(text: &str) -> Option<IpAddr> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        proxies_with(list, ForwardedHeader::XForwardedFor)
    }

    fn proxies_with(list: &[&str], header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies::new(
            list.iter().map(|n| Network::parse(n).unwrap()).collect(),
            header,
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const PROXY: &str = "10.1.2.3:40000";

    #[test]
    fn networks_parse_strictly() {
        assert!(
            Network::parse("10.0.0.0/8")
                .unwrap()
                .contains(ip("10.200.1.1"))
        );
        assert!(
            !Network::parse("10.0.0.0/8")
                .unwrap()
                .contains(ip("11.0.0.1"))
        );
        assert!(
            Network::parse("192.0.2.7")
                .unwrap()
                .contains(ip("192.0.2.7"))
        );
        assert!(
            !Network::parse("192.0.2.7")
                .unwrap()
                .contains(ip("192.0.2.8"))
        );
        assert!(Network::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!Network::parse("fd00::/8").unwrap().contains(ip("10.0.0.1")));
        assert!(
            Network::parse("10.0.0.0/8")
                .unwrap()
                .contains(ip("::ffff:10.0.0.1")),
            "a mapped address is its IPv4 address"
        );
        assert!(Network::parse("0.0.0.0/1").unwrap().contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "fd00::/129",
            "example.com",
            "",
            "10.0.0.0/",
        ] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Network::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let peer: SocketAddr = PROXY.parse().unwrap();
        let client = |pairs: &[(&'static str, &str)]| trusted.client(peer, &headers(pairs));
        assert_eq!(client(&[]).unwrap(), peer, "no header: the peer itself");
        assert_eq!(
            client(&[("x-forwarded-for", "203.0.113.9")]).unwrap(),
            "203.0.113.9:0".parse().unwrap()
        );
        // The left end is what the client wrote: the right-most untrusted
        // hop is believed.
        assert_eq!(
            client(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.9.9.9")]).unwrap(),
            "203.0.113.9:0".parse().unwrap()
        );
        // Several header lines are one list.
        assert_eq!(
            client(&[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "198.51.100.4")
            ])
            .unwrap(),
            "198.51.100.4:0".parse().unwrap()
        );
        // The proxies set X-Forwarded-For: a Forwarded header is the
        // client's own, passed through, and means nothing.
        assert_eq!(
            client(&[
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-for", "192.0.2.60")
            ])
            .unwrap(),
            "192.0.2.60:0".parse().unwrap()
        );
        assert_eq!(client(&[("forwarded", "for=6.6.6.6")]).unwrap(), peer);

        // Proxies that set Forwarded: X-Forwarded-For is the client's.
        let rfc = proxies_with(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        let client = |pairs: &[(&'static str, &str)]| rfc.client(peer, &headers(pairs));
        assert_eq!(
            client(&[(
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::17]:4711\";proto=https, for=10.0.0.5"
            )])
            .unwrap(),
            "[2001:db8::17]:0".parse().unwrap()
        );
        assert_eq!(
            client(&[
                ("forwarded", "for=192.0.2.60;proto=https;by=10.0.0.1"),
                ("x-forwarded-for", "6.6.6.6")
            ])
            .unwrap(),
            "192.0.2.60:0".parse().unwrap()
        );
        assert_eq!(client(&[("x-forwarded-for", "6.6.6.6")]).unwrap(), peer);
        let client = |pairs: &[(&'static str, &str)]| trusted.client(peer, &headers(pairs));
        // Every hop trusted: the left-most.
        assert_eq!(
            client(&[("x-forwarded-for", "10.0.0.7, 10.0.0.8")]).unwrap(),
            "10.0.0.7:0".parse().unwrap()
        );
        assert_eq!(
            client(&[("x-forwarded-for", "::ffff:203.0.113.9")]).unwrap(),
            "203.0.113.9:0".parse().unwrap()
        );
    }

    #[test]
    fn behind_a_tls_terminating_proxy_only_the_proxies_connect() {
        let open = proxies(&["10.0.0.0/8"]);
        assert!(open.admits(ip("203.0.113.1")));
        let exclusive = open.exclusive();
        assert!(exclusive.admits(ip("10.3.3.3")));
        assert!(exclusive.admits(ip("::ffff:10.3.3.3")));
        assert!(!exclusive.admits(ip("203.0.113.1")));
        assert!(!exclusive.admits(ip("127.0.0.1")));
    }

    #[test]
    fn headers_from_anyone_else_or_that_do_not_parse_are_refused() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let outsider: SocketAddr = "203.0.113.1:5555".parse().unwrap();
        assert_eq!(
            trusted.client(outsider, &headers(&[("x-forwarded-for", "10.0.0.1")])),
            Err(ForwardedError::Untrusted)
        );
        let rfc = proxies_with(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        assert_eq!(
            rfc.client(outsider, &headers(&[("forwarded", "for=1.2.3.4")])),
            Err(ForwardedError::Untrusted)
        );
        assert_eq!(trusted.client(outsider, &HeaderMap::new()), Ok(outsider));
        // With no trusted proxy the headers mean nothing (a client behind
        // its own corporate proxy is not refused for them).
        assert_eq!(
            TrustedProxies::default().client(outsider, &headers(&[("x-forwarded-for", "1.2.3.4")])),
            Ok(outsider)
        );
        let peer: SocketAddr = PROXY.parse().unwrap();
        for (header, value) in [
            (ForwardedHeader::XForwardedFor, "not-an-ip"),
            (ForwardedHeader::XForwardedFor, "1.2.3.4,,5.6.7.8"),
            (ForwardedHeader::XForwardedFor, ""),
            (ForwardedHeader::Forwarded, "for=unknown"),
            (ForwardedHeader::Forwarded, "for=_hidden"),
            (ForwardedHeader::Forwarded, "proto=https"),
            (ForwardedHeader::Forwarded, "for=1.2.3.4;for=5.6.7.8"),
            (ForwardedHeader::Forwarded, "for=\"[2001:db8::1]"),
            (ForwardedHeader::Forwarded, "for"),
        ] {
            let name = match header {
                ForwardedHeader::XForwardedFor => "x-forwarded-for",
                ForwardedHeader::Forwarded => "forwarded",
            };
            assert_eq!(
                proxies_with(&["10.0.0.0/8"], header).client(peer, &headers(&[(name, value)])),
                Err(ForwardedError::Malformed),
                "{name}: {value}"
            );
        }
        let long = vec!["192.0.2.1"; MAX_HOPS + 1].join(",");
        assert_eq!(
            trusted.client(peer, &headers(&[("x-forwarded-for", &long)])),
            Err(ForwardedError::Malformed)
        );
    }

    proptest::proptest! {
        /// Whatever a client puts in front, it never chooses an address a
        /// trusted proxy did not vouch for: the result is the peer, an
        /// appended hop, or an error.
        #[test]
        fn the_client_never_picks_its_own_address(prefix in "[ -~]{0,200}", real in proptest::prelude::any::<[u8; 4]>()) {
            let trusted = proxies(&["10.0.0.0/8"]);
            let peer: SocketAddr = PROXY.parse().unwrap();
            let real = IpAddr::from(real);
            let value = format!("{prefix}, {real}");
            if let Ok(value) = value.parse::<http::HeaderValue>() {
                let mut map = HeaderMap::new();
                map.insert("x-forwarded-for", value);
                if let Ok(client) = trusted.client(peer, &map)
                    && !trusted.trusts(real)
                {
                    proptest::prop_assert_eq!(client.ip(), canonical(real));
                }
            }
        }
    }
}
