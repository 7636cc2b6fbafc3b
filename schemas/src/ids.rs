//! The id rule shared by wallets, payments, refunds and deposit references.

/// Longest id accepted, in characters.
pub const ID_LEN_MAX: usize = 64;

/// True when `id` is 1–64 characters of `[A-Za-z0-9_-]`.
///
/// Ids become subject tokens (`falcon.evt.payment.requested.<id>`), so the
/// rule keeps out `.`, `*`, `>` and white space.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_LEN_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("pay_1-A"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a.b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("a*"));
        assert!(!is_valid_id("é"));
    }
}
