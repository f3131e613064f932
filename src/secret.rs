//! Comparing secrets (stream keys, the admin token) without telling an attacker, through timing,
//! how close a guess came.

/// Compares a presented secret with the expected one in time that depends only on the expected
/// secret's length, so response timing does not reveal how long a matching prefix was.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = presented.len() ^ expected.len();
    for (i, &e) in expected.iter().enumerate() {
        diff |= usize::from(presented.get(i).copied().unwrap_or(!e) ^ e);
    }
    // Keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_only_identical_bytes() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"s3creT", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3crett", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
        assert!(!constant_time_eq(b"x", b""));
        // A length difference that is a multiple of 256 must not cancel out.
        assert!(!constant_time_eq(&[0; 256], b""));
        // The missing tail is not taken for zero bytes.
        assert!(!constant_time_eq(b"a", b"a\0"));
    }
}
