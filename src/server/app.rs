//! What the listeners serve: the gateway's shared state plus the part that
//! sits above the transports, the legacy polling bridge. Built once at
//! startup; the bridge registers itself with the gateway so every
//! transport's subscribe reaches it without the layers below knowing it.

use std::ops::Deref;
use std::sync::Arc;

use crate::bridge::Bridges;
use crate::config::Config;
use crate::gateway::Gateway;

pub struct App {
    /// The state every transport and session reaches.
    pub gw: Arc<Gateway>,
    /// The legacy polling bridge's routes and running feeds.
    pub bridges: Arc<Bridges>,
}

impl App {
    pub fn new(config: Config) -> Result<Arc<App>, String> {
        let gw = Gateway::new(config)?;
        let bridges = Bridges::new(&gw.config, &gw.metrics);
        gw.set_demand(bridges.clone());
        Ok(Arc::new(App { gw, bridges }))
    }
}

/// The routers read the gateway's state (`app.config`, `app.metrics`, …)
/// as if the app were the gateway.
impl Deref for App {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.gw
    }
}
