//! The close codes a relay socket is closed with, in one place: the private range (RFC 6455
//! §7.4.2) for the relay's own reasons, and the protocol's for the rest.

/// No valid credential: none on the upgrade and no `InitConnection` in time, it failed, or
/// an agent's session ended.
pub const UNAUTHENTICATED: u16 = 4401;
/// The token (or an agent's session) expired and no fresh one came in-band.
pub const TOKEN_EXPIRED: u16 = 4410;
/// The socket did not read what it was sent.
pub const TOO_SLOW: u16 = 4408;
/// A subscription failed (the store); reconnect and catch up with `fromSeq`.
pub const SUBSCRIPTION_FAILED: u16 = 1011;
/// The daemon is stopping.
pub const GOING_AWAY: u16 = 1001;
/// A frame larger than `relay.max_frame_bytes` (RFC 6455's "message too big").
pub const TOO_BIG: u16 = 1009;
/// A frame the WebSocket layer cannot read (RFC 6455's "protocol error").
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text frame that is not UTF-8 (RFC 6455's "invalid frame payload data").
pub const INVALID_DATA: u16 = 1007;
