//! Secrets the shell hands out: users' API tokens (returned once, when an
//! invitation is accepted) and invitation tokens. Only their SHA-256 hashes
//! ([`crate::config::hash_token`]) ever reach the engine, the journal or a
//! snapshot.

use rand::CryptoRng;

/// Prefix of API tokens, so a leaked one is recognisable in logs and scans.
pub const USER_TOKEN_PREFIX: &str = "rlu_";
/// Prefix of invitation tokens.
pub const INVITE_TOKEN_PREFIX: &str = "rli_";

/// 256 random bits from the operating system's CSPRNG (through rand's
/// thread-local ChaCha generator, reseeded from the OS), hex-encoded after
/// `prefix`.
pub fn new_token(prefix: &str) -> String {
    // clippy.toml bans `rand::rng` because unseeded randomness must never
    // reach the deterministic core; this is the shell, and a token has to be
    // unpredictable. The core only ever sees the token's hash.
    #[allow(clippy::disallowed_methods)]
    let mut rng = rand::rng();
    fill(&mut rng, prefix)
}

fn fill(rng: &mut impl CryptoRng, prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_prefixed_and_distinct() {
        let a = new_token(USER_TOKEN_PREFIX);
        let b = new_token(USER_TOKEN_PREFIX);
        assert!(a.starts_with("rlu_") && a.len() == 4 + 64, "{a}");
        assert!(a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
