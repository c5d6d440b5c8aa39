//! Subscriber tokens: JWTs signed by the site (HS256 with a shared secret,
//! RS256 or ES256 with a public key) whose `channels` claim lists the
//! channel patterns the bearer may read, with an expiry (`exp`) and
//! optionally a start (`nbf`), both checked with `auth.leeway` of clock
//! skew.
//!
//! ```json
//! {"exp": 1767225600, "nbf": 1767222000, "channels": ["news", "prices.*"]}
//! ```
//!
//! Claims are signed by the site, not trusted to be sensible: an `exp` of
//! 2^64-1 is valid JSON and a valid signature, so every time computed from
//! a claim uses checked arithmetic (a deadline past what the clock can
//! represent means "no deadline").

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::Grant;
use crate::config::{glob_match, AuthConfig};
use crate::protocol::error::ApiError;

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    channels: Vec<String>,
}

/// A key and the algorithm it verifies.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// When a token with this `exp` stops being honoured: `exp + leeway`
/// seconds after the epoch, or `None` when that is beyond what
/// `SystemTime` can hold (the token never expires in practice).
pub fn honoured_until(exp: u64, leeway: Duration) -> Option<SystemTime> {
    let secs = exp.checked_add(leeway.as_secs())?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Reads a PEM public key: RSA (RS256) or EC P-256 (ES256).
pub fn load_public_key(path: &Path) -> Result<(DecodingKey, Algorithm), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, Algorithm::ES256));
    }
    Err(format!(
        "{} is not a PEM RSA or P-256 public key",
        path.display()
    ))
}

impl Verifier {
    pub fn from_config(config: &AuthConfig) -> Result<Option<Verifier>, String> {
        let (key, algorithm) = match (&config.jwt_secret, &config.jwt_public_key_file) {
            (Some(secret), _) => (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ),
            (None, Some(path)) => load_public_key(path)?,
            (None, None) => return Ok(None),
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp"]);
        // Clock skew between the site that signs and the gateway (validated
        // to be at most an hour, so `now + leeway` cannot overflow).
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = false;
        Ok(Some(Verifier { key, validation }))
    }

    /// Checks the signature, the expiry and that a pattern covers `channel`.
    pub fn allows(&self, token: &str, channel: &str) -> Result<Grant, ApiError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => {
                        ApiError::Unauthorized("the subscriber token has expired".into())
                    }
                    ErrorKind::ImmatureSignature => {
                        ApiError::Unauthorized("the subscriber token is not valid yet (nbf)".into())
                    }
                    _ => ApiError::Unauthorized("the subscriber token is not valid".into()),
                }
            })?;
        let claims = data.claims;
        if !claims
            .channels
            .iter()
            .any(|pattern| glob_match(pattern.as_bytes(), channel.as_bytes()))
        {
            return Err(ApiError::Forbidden("not allowed to subscribe".into()));
        }
        Ok(Grant {
            expires: honoured_until(claims.exp, Duration::from_secs(self.validation.leeway)),
        })
    }
}

#[cfg(test)]
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn verifier() -> Verifier {
        Verifier::from_config(&AuthConfig {
            jwt_secret: Some("0123456789abcdef0123".into()),
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap()
    }

    fn mint(secret: &str, exp: u64, channels: &[&str]) -> String {
        let claims = serde_json::json!({"exp": exp, "channels": channels});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn valid_token_for_its_channels_only() {
        let v = verifier();
        let token = mint(
            "0123456789abcdef0123",
            now_secs() + 60,
            &["news", "prices.*"],
        );
        assert!(v.allows(&token, "news").is_ok());
        assert!(v.allows(&token, "prices.eur").is_ok());
        assert_eq!(v.allows(&token, "secret").unwrap_err().status(), 403);
    }

    fn mint_claims(claims: &serde_json::Value) -> String {
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123"),
        )
        .unwrap()
    }

    #[test]
    fn an_exp_beyond_the_clock_is_no_deadline_not_a_panic() {
        // Found by the issue: exp = 2^64-1 panicked "overflow when adding
        // duration to instant".
        let v = verifier();
        let token = mint("0123456789abcdef0123", u64::MAX, &["news"]);
        assert_eq!(v.allows(&token, "news").unwrap().expires, None);
        let token = mint("0123456789abcdef0123", u64::MAX - 3, &["news"]);
        assert!(v.allows(&token, "news").is_ok());
        assert_eq!(honoured_until(u64::MAX, Duration::from_secs(5)), None);
        assert_eq!(
            honoured_until(100, Duration::from_secs(5)),
            Some(UNIX_EPOCH + Duration::from_secs(105))
        );
    }

    #[test]
    fn nbf_in_the_future_is_refused_until_then() {
        let v = verifier();
        let claims = |nbf: u64| serde_json::json!({"exp": now_secs() + 600, "nbf": nbf, "channels": ["news"]});
        let early = v.allows(&mint_claims(&claims(now_secs() + 300)), "news");
        let err = early.unwrap_err();
        assert_eq!(err.status(), 401);
        assert!(err.to_string().contains("not valid yet"), "{err}");
        assert!(v
            .allows(&mint_claims(&claims(now_secs() - 1)), "news")
            .is_ok());
        // Within the leeway (5 s by default) counts as now.
        assert!(v
            .allows(&mint_claims(&claims(now_secs() + 2)), "news")
            .is_ok());
    }

    #[test]
    fn leeway_is_configurable() {
        let strict = Verifier::from_config(&AuthConfig {
            jwt_secret: Some("0123456789abcdef0123".into()),
            leeway: Duration::ZERO,
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap();
        let token = mint("0123456789abcdef0123", now_secs() - 2, &["news"]);
        assert_eq!(strict.allows(&token, "news").unwrap_err().status(), 401);
        assert!(verifier().allows(&token, "news").is_ok(), "5 s default");
        let exp = now_secs() + 60;
        let token = mint("0123456789abcdef0123", exp, &["news"]);
        assert_eq!(
            strict.allows(&token, "news").unwrap().expires,
            Some(UNIX_EPOCH + Duration::from_secs(exp))
        );
    }

    /// A claim value of any JSON type and size, biased to the edges.
    fn claim_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        prop_oneof![
            4 => prop_oneof![
                Just(0u64),
                Just(u64::MAX),
                Just(u64::MAX - 1),
                Just(i64::MAX as u64),
                Just(i64::MAX as u64 + 1),
                (0u64..4_000_000_000),
                any::<u64>(),
            ]
            .prop_map(serde_json::Value::from),
            1 => any::<i64>().prop_map(serde_json::Value::from),
            1 => any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            1 => ".{0,8}".prop_map(serde_json::Value::from),
            1 => Just(serde_json::Value::Null),
            1 => Just(serde_json::json!([1, 2])),
        ]
    }

    proptest::proptest! {
        /// Any signed claims: `allows` answers (never panics), and what it
        /// accepts is consistent with the claims and the clock.
        #[test]
        fn any_signed_claims_are_answered_consistently(
            exp in proptest::option::of(claim_value()),
            nbf in proptest::option::of(claim_value()),
            channels in proptest::option::of(proptest::collection::vec("[a-z.*]{0,6}", 0..3)),
            relative_exp in proptest::option::of(-100_000i64..100_000),
        ) {
            let v = verifier();
            let mut claims = serde_json::Map::new();
            // Half the time an exp near now, the rest anything at all.
            let exp = match relative_exp {
                Some(delta) => Some(serde_json::Value::from(now_secs() as i64 + delta)),
                None => exp,
            };
            if let Some(exp) = &exp { claims.insert("exp".into(), exp.clone()); }
            if let Some(nbf) = &nbf { claims.insert("nbf".into(), nbf.clone()); }
            if let Some(channels) = &channels {
                claims.insert("channels".into(), serde_json::json!(channels));
            }
            let token = mint_claims(&serde_json::Value::Object(claims));
            for channel in ["news", "a.b"] {
                match v.allows(&token, channel) {
                    Ok(grant) => {
                        let exp = exp.as_ref().and_then(serde_json::Value::as_u64)
                            .expect("accepted tokens have an unsigned exp");
                        let now = now_secs();
                        proptest::prop_assert!(exp.saturating_add(5) >= now, "expired {exp}");
                        if let Some(nbf) = nbf.as_ref().and_then(serde_json::Value::as_u64) {
                            proptest::prop_assert!(nbf <= now + 5 + 1, "not yet valid {nbf}");
                        }
                        proptest::prop_assert_eq!(grant.expires, honoured_until(exp, Duration::from_secs(5)));
                        let covered = channels.as_ref().is_some_and(|c| {
                            c.iter().any(|p| glob_match(p.as_bytes(), channel.as_bytes()))
                        });
                        proptest::prop_assert!(covered, "no pattern covers {}", channel);
                    }
                    Err(e) => proptest::prop_assert!(
                        matches!(e.status().as_u16(), 401 | 403),
                        "unexpected answer {}", e
                    ),
                }
            }
        }
    }

    #[test]
    fn expired_forged_and_garbage_tokens_are_401() {
        let v = verifier();
        let expired = mint("0123456789abcdef0123", now_secs() - 120, &["news"]);
        assert_eq!(v.allows(&expired, "news").unwrap_err().status(), 401);
        let forged = mint("another-secret-entirely", now_secs() + 60, &["news"]);
        assert_eq!(v.allows(&forged, "news").unwrap_err().status(), 401);
        assert_eq!(v.allows("not.a.jwt", "news").unwrap_err().status(), 401);
    }
}
