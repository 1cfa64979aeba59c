//! Passwords and tokens.
//!
//! Passwords are hashed with Argon2id in PHC string form (salt and parameters
//! inside the string), so the cost can change without breaking stored hashes.
//! Hashing runs on the blocking pool: at the default cost it takes tens of
//! milliseconds of CPU, which must not stall the runtime's workers. At most
//! `--password-hash-concurrency` hashes (one per core by default) run at once: a
//! login flood queues for a slot (up to [`HASH_QUEUE_WAIT`], then `overloaded`)
//! instead of starting hundreds of 19 MiB hashes together.
//!
//! A token is 128 random bits from the OS-seeded CSPRNG, followed by its expiry
//! time. The whole string is the key under which storage keeps the token's owner,
//! so editing the expiry part yields a token that storage does not know.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::Rng;

use crate::metrics::Metrics;
use crate::protocol::Millis;

/// Passwords of a bulk batch hashed per hashing slot ([`PasswordHashing::hash_all_blocking`]).
pub const HASH_CHUNK: usize = 16;

/// How long a login or signup waits for a hashing slot before `overloaded`.
pub const HASH_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Argon2id's cost parameters.
#[derive(Debug, Clone, Copy)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

/// Argon2id with the configured cost, at most `slots` hashes at once.
#[derive(Clone)]
pub struct PasswordHashing {
    pub memory_kib: u32,
    pub iterations: u32,
    slots: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Failed(String),
    #[error("every password hashing slot stayed busy for {HASH_QUEUE_WAIT:?}")]
    Busy,
}

impl PasswordHashing {
    pub fn new(cost: HashCost, concurrency: usize, metrics: Arc<Metrics>) -> Self {
        PasswordHashing {
            memory_kib: cost.memory_kib,
            iterations: cost.iterations,
            slots: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            metrics,
        }
    }

    /// Runs `f` on the blocking pool once a hashing slot is free.
    async fn in_slot<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _slot = tokio::time::timeout(HASH_QUEUE_WAIT, self.slots.acquire())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|e| HashError::Failed(e.to_string()))?;
        let m = &self.metrics;
        let now = m.password_hashes_in_flight.fetch_add(1, Relaxed) + 1;
        m.password_hashes_peak.fetch_max(now, Relaxed);
        let r = tokio::task::spawn_blocking(f).await;
        m.password_hashes_in_flight.fetch_sub(1, Relaxed);
        r.map_err(|e| HashError::Failed(e.to_string()))
    }

    fn argon2(&self) -> Result<Argon2<'static>, HashError> {
        let params = Params::new(self.memory_kib, self.iterations, 1, None)
            .map_err(|e| HashError::Failed(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Hashes a password into a PHC string.
    pub fn hash(&self, password: &str) -> Result<String, HashError> {
        let salt_bytes: [u8; 16] = rand::rng().random();
        let salt =
            SaltString::encode_b64(&salt_bytes).map_err(|e| HashError::Failed(e.to_string()))?;
        self.argon2()?
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| HashError::Failed(e.to_string()))
    }

    /// Checks a password against a stored PHC string (with the parameters it holds).
    pub fn verify(&self, password: &str, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    }

    pub async fn hash_blocking(&self, password: String) -> Result<String, HashError> {
        let this = self.clone();
        self.in_slot(move || this.hash(&password)).await?
    }

    /// Hashes many passwords (each with its own salt), [`HASH_CHUNK`] per
    /// hashing slot, one chunk after the other: bulk provisioning's batches.
    /// A hand-off to the blocking pool per hash would cost more than a cheap
    /// hash; a whole batch in one slot would hold it for a minute at the
    /// default cost, and logins wait for slots.
    pub async fn hash_all_blocking(
        &self,
        mut passwords: Vec<String>,
    ) -> Result<Vec<Result<String, HashError>>, HashError> {
        let mut hashes = Vec::with_capacity(passwords.len());
        while !passwords.is_empty() {
            let chunk: Vec<String> = passwords.drain(..passwords.len().min(HASH_CHUNK)).collect();
            let this = self.clone();
            let done = self
                .in_slot(move || chunk.iter().map(|p| this.hash(p)).collect::<Vec<_>>())
                .await?;
            hashes.extend(done);
        }
        Ok(hashes)
    }

    /// Checks a password in a hashing slot; `Err` only when no slot came free.
    pub async fn verify_blocking(&self, password: String, phc: String) -> Result<bool, HashError> {
        let this = self.clone();
        self.in_slot(move || this.verify(&password, &phc)).await
    }
}

/// A new token: 32 hex digits of randomness, `.`, expiry in ms (0 = none).
pub fn new_token(now: Millis, ttl: Option<Duration>) -> String {
    let random: u128 = rand::rng().random();
    let expires = ttl.map_or(0, |t| now + t.as_millis() as Millis);
    format!("{random:032x}.{expires}")
}

/// True when the token carries an expiry that has passed (or is malformed).
pub fn token_expired(token: &str, now: Millis) -> bool {
    match token_expiry(token) {
        Some(0) => false,
        Some(expires) => now >= expires,
        None => true,
    }
}

/// The expiry a token carries (0: none), or `None` for a malformed token.
pub fn token_expiry(token: &str) -> Option<Millis> {
    token.rsplit_once('.').and_then(|(_, e)| e.parse().ok())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_never_contain_the_password() {
        let cost = HashCost {
            memory_kib: 8,
            iterations: 1,
        };
        let h = PasswordHashing::new(cost, 1, Arc::default());
        let phc = h.hash("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("correct horse"));
        assert!(h.verify("correct horse", &phc));
        assert!(!h.verify("wrong horse", &phc));
    }

    #[test]
    fn tokens_are_random_and_expire() {
        let a = new_token(1000, Some(Duration::from_secs(1)));
        assert_ne!(a, new_token(1000, Some(Duration::from_secs(1))));
        assert!(!token_expired(&a, 1999));
        assert!(token_expired(&a, 2000));
        assert!(!token_expired(&new_token(1000, None), u64::MAX));
        assert!(token_expired("garbage", 0));
    }
}
