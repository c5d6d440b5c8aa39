//! Redis URL syntax (`bus = "redis://…"`, `redis.cluster_nodes`): is it
//! one, is it well formed (without connecting), and the same URL with its
//! password hidden for messages and logs.

/// True when `bus` names a Redis server (`redis://…` or `rediss://…`).
pub fn is_redis_url(bus: &str) -> bool {
    bus.starts_with("redis://") || bus.starts_with("rediss://")
}

/// Checks a Redis URL without connecting; returns its database number.
pub fn check_url(url: &str) -> Result<i64, String> {
    if !is_redis_url(url) {
        return Err(format!(
            "{:?} is not a redis:// or rediss:// URL",
            redact(url)
        ));
    }
    use redis::IntoConnectionInfo;
    url.into_connection_info()
        .map(|info| info.redis_settings().db())
        .map_err(|e| format!("{:?} is not a valid Redis URL: {e}", redact(url)))
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..host_end].rfind('@') else {
        return url.to_string();
    };
    let user = rest[..at].split(':').next().unwrap_or("");
    format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:pw@h:1/2"), "redis://:***@h:1/2");
        assert_eq!(redact("rediss://user:pw@h"), "rediss://user:***@h");
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://h/?x=a@b"), "redis://h/?x=a@b");
        assert_eq!(redact("memory"), "memory");
    }

    #[test]
    fn urls_are_checked_without_connecting() {
        assert_eq!(check_url("redis://127.0.0.1:1/5"), Ok(5));
        assert_eq!(check_url("rediss://example.com"), Ok(0));
        let err = check_url("redis://:hunter2@h:port").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(check_url("http://h").is_err());
        assert!(is_redis_url("rediss://x") && !is_redis_url("memory"));
    }
}
