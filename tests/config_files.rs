//! Files the configuration names (TLS certificate and key, JWT public key,
//! admin token file) are loaded by the gateway's own loaders, not by
//! config's validation (issue 18: config is pure). A missing or broken one
//! is still a configuration problem: exit 2, one stderr line naming its
//! key, no ready line, with `--check-config` and at startup alike, and
//! reported together with the syntax problems.

mod common;

use std::time::Duration;

use common::*;

const EXIT: Duration = Duration::from_secs(10);

/// Runs the binary once with `--check-config` and once as a server on
/// port 0; both must exit 2 without a ready line. Returns each run's
/// stderr lines.
async fn refused(args: &[&str]) -> [Vec<String>; 2] {
    let mut check: Vec<&str> = args.to_vec();
    check.push("--check-config");
    let mut start: Vec<&str> = args.to_vec();
    start.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let mut out = [Vec::new(), Vec::new()];
    for (run, argv) in [check, start].iter().enumerate() {
        let (code, stdout, stderr) = run_to_exit(argv, &[], EXIT).await;
        assert_eq!(code, Some(2), "{argv:?}: stderr {stderr:?}");
        assert!(!stdout.contains("ready"), "{argv:?}: {stdout:?}");
        assert!(!stdout.contains("configuration OK"), "{argv:?}: {stdout:?}");
        out[run] = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect();
    }
    out
}

fn assert_one_line(lines: &[String], key: &str, says: &str) {
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("pollbridge: config key '{key}': ")),
        "{lines:?}"
    );
    assert!(lines[0].contains(says), "{lines:?} should say {says:?}");
}

#[tokio::test]
async fn a_missing_file_is_named_by_its_key() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--tls-cert-file", missing, "--tls-key-file", missing],
            "tls.cert_file",
        ),
        (
            &["--jwt-public-key-file", missing],
            "auth.jwt_public_key_file",
        ),
        (&["--admin-token-file", missing], "admin.token_file"),
    ];
    for (args, key) in cases {
        for lines in refused(args).await {
            assert_one_line(&lines, key, &format!("cannot read {missing}"));
        }
    }
}

#[tokio::test]
async fn a_file_that_is_not_what_it_should_be_is_named_by_its_key() {
    let dir = TempDir::new();
    let junk = dir.write("junk.pem", "not a PEM file\n");
    let junk = junk.to_str().unwrap();
    let short = dir.write("admin-token", "short\n");
    let short = short.to_str().unwrap();
    let cases: [(&[&str], &str, &str); 3] = [
        (
            &["--jwt-public-key-file", junk],
            "auth.jwt_public_key_file",
            "is not a PEM RSA or P-256 public key",
        ),
        (
            &["--tls-cert-file", junk, "--tls-key-file", junk],
            "tls.cert_file",
            "holds no certificate",
        ),
        (
            &["--admin-token-file", short],
            "admin.token_file",
            "at least 16 bytes",
        ),
    ];
    for (args, key, says) in cases {
        for lines in refused(args).await {
            assert_one_line(&lines, key, says);
        }
    }
}

#[tokio::test]
async fn file_problems_are_reported_with_the_syntax_problems() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing-token");
    let args = [
        "--prefix",
        "rt",
        "--admin-token-file",
        missing.to_str().unwrap(),
    ];
    for lines in refused(&args).await {
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("config key 'prefix'"), "{lines:?}");
        assert!(
            lines[1].contains("config key 'admin.token_file'"),
            "{lines:?}"
        );
    }
}
