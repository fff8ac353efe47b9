//! Key extractors for `http::Request`: the peer's or client's IP address, a header's value, an
//! outbound request's upstream host.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request};
use ipnet::IpNet;

use super::{ExtractKey, KeyError, KeyExtractor};
use crate::error::ConfigError;

const NO_PEER: KeyError = KeyError::new(
    "the request has no peer address that this build reads (axum 0.8's `ConnectInfo<SocketAddr>` \
     with feature `axum`, tonic 0.14's `TcpConnectInfo` with feature `tonic`, or a `SocketAddr` \
     in the request extensions); serve axum apps with \
     `into_make_service_with_connect_info::<SocketAddr>()`, or insert the client's `SocketAddr` \
     into the request extensions",
);

/// The TCP peer's address, from whichever server recorded it: axum's `ConnectInfo<SocketAddr>`
/// (feature `axum`), tonic's `TcpConnectInfo` (feature `tonic`), or a plain `SocketAddr` in the
/// request extensions (for hyper servers: insert it when accepting the connection).
#[inline]
fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    #[cfg(feature = "axum")]
    if let Some(info) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    #[cfg(feature = "tonic")]
    if let Some(addr) = ext
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        return Some(addr);
    }
    ext.get::<SocketAddr>().copied()
}

/// Maps IPv4-mapped IPv6 addresses to IPv4 and keeps only the first `v6_prefix` bits of IPv6 ones.
#[inline]
fn normalize(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if v6_prefix < 128 => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6_prefix))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        other => other,
    }
}

fn check_prefix(bits: u8) -> Result<(), ConfigError> {
    if bits == 0 || bits > 128 {
        return Err(ConfigError::new(
            "ipv6_prefix",
            format!("must be between 1 and 128 bits (got {bits}); 64 groups each customer's /64"),
        ));
    }
    Ok(())
}

/// Keys requests by the IP address of the TCP peer.
///
/// Forwarding headers are ignored: a client cannot choose its key. Behind a reverse proxy every
/// request comes from the proxy, so use [`ClientIp`] with the proxy's addresses instead.
///
/// IPv6 clients are grouped by their /64 network by default, because one customer connection gets
/// a whole /64 and could otherwise rotate through 2^64 keys; [`ipv6_prefix`](Self::ipv6_prefix)
/// changes that. IPv4-mapped IPv6 addresses (from dual-stack sockets) count as IPv4.
///
/// Without a recorded peer address the request has no key (see
/// [when no key can be extracted](super#when-no-key-can-be-extracted)).
///
/// The peer address is read from axum's `ConnectInfo<SocketAddr>`, tonic's `TcpConnectInfo`, or
/// a `SocketAddr` in the request's extensions. A tonic server with TLS (`ServerTlsConfig`)
/// records it as `TlsConnectInfo<TcpConnectInfo>` instead, a type that exists only with tonic's
/// TLS features: there, key with `key_fn` on
/// `req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()` and its
/// `get_ref().remote_addr()`, or insert the address as a `SocketAddr` extension in a layer
/// outside the limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerIp {
    v6_prefix: u8,
}

impl PeerIp {
    /// Keys by peer IP, IPv6 grouped by /64.
    pub const fn new() -> Self {
        Self { v6_prefix: 64 }
    }

    /// Groups IPv6 peers by their first `bits` bits (1 to 128; 128 keys each address alone).
    #[must_use]
    pub const fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = bits;
        self
    }
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyExtractor for PeerIp {
    type Key = IpAddr;

    fn validate(&self) -> Result<(), ConfigError> {
        check_prefix(self.v6_prefix)
    }
}

impl<B> ExtractKey<Request<B>> for PeerIp {
    #[inline]
    fn extract(&self, req: &Request<B>) -> Result<IpAddr, KeyError> {
        let peer = peer_addr(req).ok_or(NO_PEER)?;
        Ok(normalize(peer.ip(), self.v6_prefix))
    }
}

/// Which forwarding header a [`ClientIp`] reads. Pick the one your proxy *sets*: a header the
/// proxy merely passes through is written by the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// `X-Real-IP: client` (one address, set by the proxy).
    XRealIp,
    /// RFC 7239 `Forwarded: for=client;proto=https, for=proxy1`.
    Forwarded,
}

/// Keys requests by the client's IP address, read from a forwarding header **only** when the
/// connection comes from a trusted proxy.
///
/// - The peer is not a trusted proxy: its own address is the key, whatever headers it sent.
/// - The peer is trusted: the header's addresses are walked from the right (the hop nearest to us),
///   skipping trusted proxies; the first address that is not a trusted proxy is the key. Entries to
///   its left were written by the client and are never used.
/// - Every hop is trusted (an internal caller): the leftmost one is the key. A hop that cannot be
///   parsed stops the walk at the last trusted address.
/// - No header, or no recorded peer address: as [`PeerIp`].
///
/// With no trusted proxies configured this is exactly [`PeerIp`].
#[derive(Clone, Debug)]
pub struct ClientIp {
    trusted: Arc<[IpNet]>,
    invalid: Option<Arc<str>>,
    header: ForwardedHeader,
    v6_prefix: u8,
}

impl ClientIp {
    /// Trusts no proxy, reads `X-Forwarded-For` once some are trusted, groups IPv6 by /64.
    pub fn new() -> Self {
        Self {
            trusted: Arc::from([]),
            invalid: None,
            header: ForwardedHeader::XForwardedFor,
            v6_prefix: 64,
        }
    }

    /// The proxies whose forwarding headers are believed, as CIDRs (`"10.0.0.0/8"`) or single
    /// addresses (`"192.0.2.7"`). An entry that does not parse is reported by the layer's `build`.
    #[must_use]
    pub fn trusted_proxies<I, S>(mut self, proxies: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for p in proxies {
            let p = p.as_ref().trim();
            let parsed = p
                .parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => nets.push(canonical_net(net).trunc()),
                Err(_) => {
                    self.invalid.get_or_insert_with(|| Arc::from(p));
                }
            }
        }
        self.trusted = Arc::from(nets);
        self
    }

    /// The forwarding header to read (default [`ForwardedHeader::XForwardedFor`]).
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Groups IPv6 clients by their first `bits` bits (1 to 128; default 64).
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = bits;
        self
    }

    #[inline]
    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address for a request that came from `peer`, given the forwarding header values.
    fn resolve<'a>(&self, peer: IpAddr, values: impl Iterator<Item = &'a HeaderValue>) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        // Every line, read as text even with bytes that are not (a client's `\xff`, which a
        // proxy appending to the line passes on): dropping such a line would drop the hops the
        // proxy wrote after it, and key the request on the proxy. A hop that is not an address
        // stops the walk as any unparseable hop does.
        let values: Vec<std::borrow::Cow<'_, str>> = values
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect();
        if values.is_empty() {
            return peer;
        }
        let mut last_trusted = peer;
        match self.header {
            ForwardedHeader::XRealIp => {
                // One address, written by the proxy; the last line wins if there are several.
                return values.last().and_then(|v| parse_node(v)).unwrap_or(peer);
            }
            ForwardedHeader::XForwardedFor => {
                for hop in values.iter().rev().flat_map(|v| v.rsplit(',')) {
                    match parse_node(hop) {
                        Some(ip) if self.is_trusted(ip) => last_trusted = ip,
                        Some(ip) => return ip,
                        None => return last_trusted,
                    }
                }
            }
            ForwardedHeader::Forwarded => {
                for element in values.iter().rev().flat_map(|v| v.rsplit(',')) {
                    let node = element.split(';').find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then_some(v)
                    });
                    match node.and_then(parse_node) {
                        Some(ip) if self.is_trusted(ip) => last_trusted = ip,
                        Some(ip) => return ip,
                        None => return last_trusted,
                    }
                }
            }
        }
        last_trusted
    }
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new()
    }
}

/// `net` with an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 one it maps
/// (`10.0.0.0/8`): peers and hops are compared in that form.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// Parses one hop: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:443`, optionally quoted.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(bad) = &self.invalid {
            return Err(ConfigError::new(
                "trusted_proxies",
                format!("{bad:?} is neither a CIDR like \"10.0.0.0/8\" nor an IP address"),
            ));
        }
        check_prefix(self.v6_prefix)
    }
}

impl<B> ExtractKey<Request<B>> for ClientIp {
    fn extract(&self, req: &Request<B>) -> Result<IpAddr, KeyError> {
        let peer = peer_addr(req).ok_or(NO_PEER)?.ip().to_canonical();
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::XRealIp => "x-real-ip",
            ForwardedHeader::Forwarded => "forwarded",
        };
        let client = self.resolve(peer, req.headers().get_all(name).iter());
        Ok(normalize(client, self.v6_prefix))
    }
}

/// Keys requests by the value of a header, such as an API key or a tenant. A request without the
/// header has no key (see [when no key can be extracted](super#when-no-key-can-be-extracted)).
///
/// With the first value of the header as the key: a cache keyed by it stores responses that
/// `Vary` on that header, the circuit breaker labels its circuits with a hash of the value
/// (see [`KeyLabel`](super::KeyLabel)), and the Redis backend stores a hash of it too.
#[derive(Clone, Debug)]
pub struct HeaderKey {
    name: Result<HeaderName, Arc<str>>,
}

impl HeaderKey {
    /// Keys by header `name` (checked by the layer's `build`).
    pub fn new(name: &str) -> Self {
        Self {
            name: HeaderName::try_from(name).map_err(|_| Arc::from(name)),
        }
    }
}

impl KeyExtractor for HeaderKey {
    type Key = HeaderValue;

    fn covers_header(&self, name: &str) -> bool {
        self.name.as_ref().is_ok_and(|n| n.as_str() == name)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match &self.name {
            Ok(_) => Ok(()),
            Err(bad) => Err(ConfigError::new(
                "header",
                format!("{bad:?} is not a valid header name"),
            )),
        }
    }
}

impl<B> ExtractKey<Request<B>> for HeaderKey {
    #[inline]
    fn extract(&self, req: &Request<B>) -> Result<HeaderValue, KeyError> {
        let name = self
            .name
            .as_ref()
            .map_err(|_| KeyError::new("the key header name is invalid"))?;
        let value = req.headers().get(name).ok_or(KeyError::new(
            "the request lacks the header the limit is keyed on",
        ))?;
        // A copy, not a clone: hyper's header values are slices of the request head's buffer
        // (8 KiB and up), which a key kept in a limiter's map or a breaker's would keep alive for
        // as long as the key lives. A copy costs the value's own length.
        Ok(HeaderValue::from_bytes(value.as_bytes()).expect("the bytes of a header value"))
    }
}

/// For HTTP clients: keys outbound requests by their upstream, the request URI's authority
/// (`host[:port]`, lowercased, without userinfo), or the `Host` header when the URI has none.
/// Requests with neither share the empty key: it always gives a key.
///
/// Typically one circuit per upstream host (`CircuitBreakerLayer::builder().key(UpstreamHost)`),
/// but any keyed layer takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamHost;

impl KeyExtractor for UpstreamHost {
    type Key = Box<str>;
}

impl<B> ExtractKey<Request<B>> for UpstreamHost {
    fn extract(&self, req: &Request<B>) -> Result<Box<str>, KeyError> {
        let authority = match req.uri().authority() {
            Some(a) => a.as_str(),
            None => req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(""),
        };
        // Userinfo (`user:pass@`) is not part of which upstream it is, and must not reach logs.
        let host = authority.rsplit('@').next().unwrap_or(authority);
        Ok(host.to_ascii_lowercase().into_boxed_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::new(());
        r.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        for (k, v) in headers {
            r.headers_mut().append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peer_ip_ignores_forwarding_headers_and_groups_ipv6() {
        let k = PeerIp::new();
        let r = req("203.0.113.9:5000", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(k.extract(&r).unwrap(), ip("203.0.113.9"));
        let r = req("[2001:db8:1:2:3:4:5:6]:5000", &[]);
        assert_eq!(k.extract(&r).unwrap(), ip("2001:db8:1:2::"));
        assert_eq!(
            PeerIp::new().ipv6_prefix(128).extract(&r).unwrap(),
            ip("2001:db8:1:2:3:4:5:6")
        );
        let r = req("[::ffff:192.0.2.1]:80", &[]);
        assert_eq!(k.extract(&r).unwrap(), ip("192.0.2.1"));
        assert_eq!(k.extract(&Request::new(())).unwrap_err(), NO_PEER);
    }

    #[test]
    fn client_ip_walks_forwarded_for_from_the_right() {
        let k = ClientIp::new().trusted_proxies(["10.0.0.0/8", "192.0.2.1"]);
        assert!(k.validate().is_ok());
        // Untrusted peer: its headers are ignored.
        let r = req("203.0.113.5:1", &[("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(k.extract(&r).unwrap(), ip("203.0.113.5"));
        // Trusted peer: the spoofed leftmost entry is skipped, the first untrusted hop is the client.
        let r = req(
            "10.0.0.2:1",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 192.0.2.1")],
        );
        assert_eq!(k.extract(&r).unwrap(), ip("198.51.100.7"));
        // Several header lines are one list, in order.
        let r = req(
            "10.0.0.2:1",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "198.51.100.8, 10.1.1.1"),
            ],
        );
        assert_eq!(k.extract(&r).unwrap(), ip("198.51.100.8"));
        // Garbage stops the walk at the last trusted hop.
        let r = req(
            "10.0.0.2:1",
            &[("x-forwarded-for", "6.6.6.6, nonsense, 10.9.9.9")],
        );
        assert_eq!(k.extract(&r).unwrap(), ip("10.9.9.9"));
        // All hops trusted: the leftmost.
        let r = req("10.0.0.2:1", &[("x-forwarded-for", "10.3.3.3, 10.4.4.4")]);
        assert_eq!(k.extract(&r).unwrap(), ip("10.3.3.3"));
        // No header: the peer.
        assert_eq!(k.extract(&req("10.0.0.2:1", &[])).unwrap(), ip("10.0.0.2"));
        // Ports and brackets.
        let r = req("10.0.0.2:1", &[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(k.extract(&r).unwrap(), ip("2001:db8::"));
    }

    #[test]
    fn client_ip_reads_rfc7239_and_x_real_ip() {
        let k = ClientIp::new()
            .trusted_proxies(["10.0.0.0/8"])
            .header(ForwardedHeader::Forwarded);
        let r = req(
            "10.0.0.2:1",
            &[(
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.9;by=10.0.0.2"#,
            )],
        );
        assert_eq!(k.extract(&r).unwrap(), ip("2001:db8:cafe::"));
        let r = req("10.0.0.2:1", &[("forwarded", "for=unknown, for=10.0.0.3")]);
        assert_eq!(k.extract(&r).unwrap(), ip("10.0.0.3"));
        let k = k.header(ForwardedHeader::XRealIp);
        let r = req("10.0.0.2:1", &[("x-real-ip", "198.51.100.1")]);
        assert_eq!(k.extract(&r).unwrap(), ip("198.51.100.1"));
        let r = req("203.0.113.1:1", &[("x-real-ip", "198.51.100.1")]);
        assert_eq!(k.extract(&r).unwrap(), ip("203.0.113.1"));
    }

    #[test]
    fn bad_configuration_is_reported() {
        let e = ClientIp::new()
            .trusted_proxies(["10.0.0.0/8", "10.0.0.0/33"])
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid trusted_proxies: "10.0.0.0/33" is neither a CIDR like "10.0.0.0/8" nor an IP address"#
        );
        assert!(PeerIp::new().ipv6_prefix(0).validate().is_err());
        assert!(PeerIp::new().ipv6_prefix(129).validate().is_err());
        assert!(HeaderKey::new("bad header").validate().is_err());
        assert!(HeaderKey::new("x-api-key").validate().is_ok());
    }

    #[test]
    fn upstream_host_takes_the_authority_then_the_host_header() {
        let key = |req: Request<()>| UpstreamHost.extract(&req).unwrap();
        let req = Request::get("https://User:Pw@API.Example.com:8443/x")
            .body(())
            .unwrap();
        assert_eq!(&*key(req), "api.example.com:8443");
        let req = Request::get("/x")
            .header("host", "Svc.Internal")
            .body(())
            .unwrap();
        assert_eq!(&*key(req), "svc.internal");
        assert_eq!(&*key(Request::get("/x").body(()).unwrap()), "");
    }

    #[test]
    fn header_key_covers_its_header() {
        let k = HeaderKey::new("x-tenant");
        assert!(k.covers_header("x-tenant"));
        assert!(!k.covers_header("accept"));
        assert!(!PeerIp::new().covers_header("x-forwarded-for"));
    }

    #[test]
    fn a_line_with_bytes_that_are_not_text_keeps_the_hops_the_proxy_wrote() {
        let c = ClientIp::new().trusted_proxies(["10.0.0.0/8"]);
        for header in [
            &b"\xff, 198.51.100.7"[..],
            b"\xff\xfe",
            b"198.51.100.9, \xff, 10.0.0.3",
        ] {
            let mut r = req("10.0.0.2:1", &[]);
            r.headers_mut()
                .append("x-forwarded-for", HeaderValue::from_bytes(header).unwrap());
            let got = c.extract(&r).unwrap();
            let want = match header {
                b"\xff\xfe" => ip("10.0.0.2"),
                b"198.51.100.9, \xff, 10.0.0.3" => ip("10.0.0.3"),
                _ => ip("198.51.100.7"),
            };
            assert_eq!(got, want, "{}", String::from_utf8_lossy(header));
        }
    }

    #[test]
    fn trusted_proxies_written_as_ipv4_mapped_addresses_match_their_ipv4_peers() {
        for trusted in ["::ffff:10.0.0.0/104", "::ffff:10.0.0.2"] {
            let c = ClientIp::new().trusted_proxies([trusted]);
            assert!(c.validate().is_ok());
            for peer in ["10.0.0.2:1", "[::ffff:10.0.0.2]:1"] {
                let r = req(peer, &[("x-forwarded-for", "198.51.100.7")]);
                assert_eq!(
                    c.extract(&r).unwrap(),
                    ip("198.51.100.7"),
                    "{trusted} {peer}"
                );
            }
        }
    }

    #[test]
    fn a_header_key_does_not_keep_the_request_head_alive() {
        // As hyper makes them: the value a slice of the whole head's buffer.
        let head = bytes::Bytes::from(vec![b'k'; 64 * 1024]);
        let value = HeaderValue::from_maybe_shared(head.slice(100..140)).unwrap();
        let req = Request::get("/")
            .header("x-api-key", value)
            .body(())
            .unwrap();
        let key = HeaderKey::new("x-api-key").extract(&req).unwrap();
        assert_eq!(key.as_bytes(), &head[100..140]);
        let range = head.as_ptr_range();
        assert!(
            !range.contains(&key.as_bytes().as_ptr()),
            "the key is a copy of its 40 bytes, not a view of the 64 KiB head"
        );
    }
}
