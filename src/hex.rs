//! Lower-case hexadecimal, for digests and ids.

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The bytes `text` spells in hex (either case); `None` if it is not an even number of hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let value = |d: u8| (d as char).to_digit(16);
    digits
        .chunks(2)
        .map(|pair| Some((value(pair[0])? * 16 + value(pair[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decode_reads_what_encode_wrote_and_refuses_the_rest() {
        let bytes = [0u8, 0x0f, 0xa5, 0xff];
        assert_eq!(super::decode(&super::encode(&bytes)), Some(bytes.to_vec()));
        assert_eq!(super::decode("A5fF"), Some(vec![0xa5, 0xff]));
        assert_eq!(super::decode("abc"), None);
        assert_eq!(super::decode("zz"), None);
        assert_eq!(super::decode("+1"), None);
    }
}
