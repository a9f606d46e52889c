//! HTTP `Range` headers: the single-range forms clients use to resume downloads.

use crate::storage::ByteRange;

/// The range a `Range` header asks for, if it is one `bytes=` range. Multiple ranges and other
/// units are ignored (the whole object is sent, which HTTP allows).
pub fn parse_range(header: &str) -> Option<ByteRange> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.trim().split_once('-')?;
    match (start.trim(), end.trim()) {
        ("", "") => None,
        ("", suffix) => suffix.parse().ok().map(ByteRange::Suffix),
        (start, "") => start.parse().ok().map(ByteRange::From),
        (start, end) => Some(ByteRange::Inclusive(start.parse().ok()?, end.parse().ok()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_byte_ranges() {
        assert_eq!(parse_range("bytes=0-99"), Some(ByteRange::Inclusive(0, 99)));
        assert_eq!(parse_range("bytes=100-"), Some(ByteRange::From(100)));
        assert_eq!(parse_range("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(parse_range("bytes=0-1,5-6"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_range("bytes=a-b"), None);
        assert_eq!(parse_range("bytes=-"), None);
    }
}
