//! The `[publish]` section: who may publish on the public listener.

use serde::{Deserialize, Serialize};

/// Publishing on the public listener (the admin listener always allows it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    /// Keys accepted as `Authorization: Bearer KEY` on
    /// `POST {prefix}/publish/{channel}`. Empty: public publishing is off.
    /// Default: none.
    pub keys: Vec<String>,
}
