//! The `[tls]` section: the certificate and key of the public listener.
//! Only the paths: the files are read when the gateway is built.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// TLS on the public listener. Both files or neither; re-read on SIGHUP
/// without dropping connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first). Default: none (plain HTTP).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Default: none.
    pub key_file: Option<PathBuf>,
}
