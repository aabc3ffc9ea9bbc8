//! The PROXY protocol, version 2 (the binary header HAProxy, AWS NLB, F5 and others put before
//! the TLS bytes): the client address a layer-4 load balancer saw.
//!
//! Read only from peers in `server.trusted_proxies` and only when `server.proxy_protocol` is
//! on; such a peer must then send it (a connection without it is closed), while other peers
//! are served as direct clients and never have a header read. Exactly the header's bytes are
//! read, so what follows is the untouched TLS handshake. `LOCAL` (a balancer's health check)
//! and address families other than TCP over IPv4/IPv6 name no client: the listener counts
//! them as [`crate::client_address::UNKNOWN_CLIENT`]. TLVs are skipped. The header is the only
//! word on the client: forwarding headers on such a connection are not read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Largest header accepted (addresses plus TLVs); balancers send well under this.
const MAX_LENGTH: usize = 2048;

/// Why a connection's PROXY header was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("the connection did not start with a PROXY protocol v2 header")]
    NoSignature,
    #[error("PROXY protocol version {0} is not supported (only 2)")]
    Version(u8),
    #[error("unknown PROXY command {0}")]
    Command(u8),
    #[error("the PROXY header is {0} bytes long, more than {MAX_LENGTH}")]
    TooLong(usize),
    #[error("the PROXY header's addresses are cut short")]
    Truncated,
    #[error("the connection ended inside the PROXY header")]
    Eof,
}

/// Reads one header from `stream`; the client's address, or `None` to keep the peer's.
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut fixed = [0u8; 16];
    stream
        .read_exact(&mut fixed)
        .await
        .map_err(|_| ProxyHeaderError::Eof)?;
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    check_fixed(&fixed)?;
    if length > MAX_LENGTH {
        return Err(ProxyHeaderError::TooLong(length));
    }
    let mut rest = vec![0u8; length];
    stream
        .read_exact(&mut rest)
        .await
        .map_err(|_| ProxyHeaderError::Eof)?;
    parse(&fixed, &rest)
}

fn check_fixed(fixed: &[u8; 16]) -> Result<(), ProxyHeaderError> {
    if fixed[..12] != SIGNATURE {
        return Err(ProxyHeaderError::NoSignature);
    }
    let version = fixed[12] >> 4;
    if version != 2 {
        return Err(ProxyHeaderError::Version(version));
    }
    Ok(())
}

/// The address in a whole header: the fixed 16 bytes and the `rest` they announce.
pub fn parse(fixed: &[u8; 16], rest: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    check_fixed(fixed)?;
    match fixed[12] & 0x0f {
        0 => return Ok(None), // LOCAL
        1 => {}               // PROXY
        other => return Err(ProxyHeaderError::Command(other)),
    }
    let family = fixed[13] >> 4;
    let stream = fixed[13] & 0x0f == 1;
    let addr = match (family, stream) {
        (1, true) => {
            let a = rest.get(..12).ok_or(ProxyHeaderError::Truncated)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]]))
        }
        (2, true) => {
            let a = rest.get(..36).ok_or(ProxyHeaderError::Truncated)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([a[32], a[33]]),
            )
        }
        _ => return Ok(None),
    };
    Ok(Some(addr))
}

/// A v2 `PROXY` header for a TCP connection from `source` to `destination` (tests and
/// benchmarks play the balancer with it).
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let r = read(&mut cursor).await;
        let mut after = Vec::new();
        cursor.read_to_end(&mut after).await.unwrap();
        (r, after)
    }

    #[tokio::test]
    async fn a_header_gives_the_source_and_leaves_what_follows_untouched() {
        let source: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let dest: SocketAddr = "10.0.0.1:8443".parse().unwrap();
        let mut bytes = encode(source, dest);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (r, after) = read_all(&bytes).await;
        assert_eq!(r, Ok(Some(source)));
        assert_eq!(after, b"\x16\x03\x01");

        let source: SocketAddr = "[2001:db8::7]:5000".parse().unwrap();
        let dest: SocketAddr = "[2001:db8::1]:8443".parse().unwrap();
        let (r, _) = read_all(&encode(source, dest)).await;
        assert_eq!(r, Ok(Some(source)));
    }

    #[tokio::test]
    async fn tlvs_are_skipped_and_local_keeps_the_peer() {
        let source: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let mut bytes = encode(source, "10.0.0.1:8443".parse().unwrap());
        // One TLV (PP2_TYPE_AUTHORITY, "a.example") grows the length.
        let tlv = [&[0x02u8, 0x00, 0x09][..], b"a.example"].concat();
        let length = 12 + tlv.len() as u16;
        bytes[14..16].copy_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&tlv);
        bytes.push(0x16);
        let (r, after) = read_all(&bytes).await;
        assert_eq!(r, Ok(Some(source)));
        assert_eq!(after, [0x16]);

        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00, 0x16]);
        let (r, after) = read_all(&local).await;
        assert_eq!(r, Ok(None));
        assert_eq!(after, [0x16]);
    }

    #[tokio::test]
    async fn what_is_not_a_v2_header_is_refused_with_its_reason() {
        let (r, _) = read_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03aaaaaaaaaaaa").await;
        assert_eq!(r, Err(ProxyHeaderError::NoSignature));
        let (r, _) = read_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n").await;
        assert_eq!(r, Err(ProxyHeaderError::NoSignature));
        let mut v1 = encode("1.2.3.4:1".parse().unwrap(), "5.6.7.8:2".parse().unwrap());
        v1[12] = 0x11;
        assert_eq!(read_all(&v1).await.0, Err(ProxyHeaderError::Version(1)));
        let mut cmd = encode("1.2.3.4:1".parse().unwrap(), "5.6.7.8:2".parse().unwrap());
        cmd[12] = 0x25;
        assert_eq!(read_all(&cmd).await.0, Err(ProxyHeaderError::Command(5)));
        let mut long = encode("1.2.3.4:1".parse().unwrap(), "5.6.7.8:2".parse().unwrap());
        long[14..16].copy_from_slice(&60_000u16.to_be_bytes());
        assert_eq!(
            read_all(&long).await.0,
            Err(ProxyHeaderError::TooLong(60_000))
        );
        let mut short = encode("1.2.3.4:1".parse().unwrap(), "5.6.7.8:2".parse().unwrap());
        short[14..16].copy_from_slice(&4u16.to_be_bytes());
        short.truncate(20);
        assert_eq!(read_all(&short).await.0, Err(ProxyHeaderError::Truncated));
        let cut = encode("1.2.3.4:1".parse().unwrap(), "5.6.7.8:2".parse().unwrap());
        assert_eq!(read_all(&cut[..20]).await.0, Err(ProxyHeaderError::Eof));
    }
}
