//! Subscriber tokens: JWTs signed by the site (HS256 with a shared secret,
//! RS256 or ES256 with a public key) whose `channels` claim lists the
//! channel patterns the bearer may read, with an expiry (`exp`).
//!
//! ```json
//! {"exp": 1767225600, "channels": ["news", "prices.*"]}
//! ```

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::Grant;
use crate::config::{glob_match, AuthConfig};
use crate::error::ApiError;

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
        // Clock skew between the site that signs and the gateway.
        validation.leeway = 5;
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
            expires: Some(UNIX_EPOCH + Duration::from_secs(claims.exp)),
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
