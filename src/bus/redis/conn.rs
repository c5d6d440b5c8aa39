//! Connections to Redis, for one server or a cluster: the command
//! connections (publish, history reads) and the subscription connection.
//!
//! Commands go through the `redis` crate's reconnecting
//! [`ConnectionManager`] (one server) or [`ClusterConnection`] (cluster),
//! both multiplexed. The subscription connection is a plain RESP3
//! connection whose pushes (messages, subscription confirmations,
//! disconnection) go to one channel; the subscriber task owns it and
//! replaces it when it drops, so it knows exactly when messages may have
//! been missed.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline,
    ProtocolVersion, PushInfo, RedisError, RedisFuture, RedisResult, TlsCertificates, Value,
};
use tokio::sync::mpsc::UnboundedSender;

/// Where Redis is and how to reach it.
#[derive(Clone)]
pub struct Target {
    /// The server, or the cluster nodes to start from.
    nodes: Vec<ConnectionInfo>,
    cluster: bool,
    /// PEM CA certificates for TLS instead of the system store.
    ca: Option<Vec<u8>>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl Target {
    pub fn new(
        urls: &[&str],
        cluster: bool,
        ca: Option<Vec<u8>>,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Target, String> {
        let nodes = urls
            .iter()
            .map(|url| {
                url.into_connection_info()
                    .map_err(|e| format!("bad Redis URL {}: {e}", super::redact(url)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Target {
            nodes,
            cluster,
            ca,
            connect_timeout,
            command_timeout,
        })
    }

    fn certs(&self) -> Option<TlsCertificates> {
        self.ca.as_ref().map(|ca| TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone()),
        })
    }

    fn client(&self, info: ConnectionInfo) -> RedisResult<Client> {
        match self.certs() {
            Some(certs) => Client::build_with_tls(info, certs),
            None => Client::open(info),
        }
    }

    fn cluster_builder(&self) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.command_timeout)
            // The caller bounds every command; don't let the cluster client
            // retry for long behind its back.
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(200);
        if let Some(certs) = self.certs() {
            builder = builder.certs(certs);
        }
        builder
    }

    /// One command connection. No I/O here: it connects on first use and
    /// reconnects by itself after errors. RESP3, so that it notices a
    /// dropped connection at once (a disconnection push) and reconnects
    /// before the next command rather than failing it.
    pub fn command_connection(&self) -> RedisResult<CommandConn> {
        if self.cluster {
            let client: ClusterClient = self
                .cluster_builder()
                .use_protocol(ProtocolVersion::RESP3)
                .build()?;
            let config = ClusterConfig::new()
                .set_connection_timeout(self.connect_timeout)
                .set_response_timeout(self.command_timeout);
            Ok(CommandConn::Cluster(
                client.get_pending_async_connection_with_config(config),
            ))
        } else {
            let client = self.client(resp3(self.nodes[0].clone()))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.command_timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_millis(200));
            Ok(CommandConn::Single(
                ConnectionManager::new_lazy_with_config(client, config)?,
            ))
        }
    }

    /// Opens a subscription connection whose pushes go to `pushes`.
    pub async fn subscription_connection(
        &self,
        pushes: UnboundedSender<PushInfo>,
    ) -> RedisResult<PubSubConn> {
        if self.cluster {
            let client = self
                .cluster_builder()
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(pushes)
                .build()?;
            Ok(PubSubConn::Cluster(client.get_async_connection().await?))
        } else {
            let client = self.client(resp3(self.nodes[0].clone()))?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.command_timeout))
                .set_push_sender(pushes);
            Ok(PubSubConn::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ))
        }
    }
}

fn resp3(info: ConnectionInfo) -> ConnectionInfo {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    info.set_redis_settings(settings)
}

/// A command connection: cheap to clone, multiplexed.
#[derive(Clone)]
pub enum CommandConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for CommandConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            CommandConn::Single(c) => c.req_packed_command(cmd),
            CommandConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            CommandConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            CommandConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            CommandConn::Single(c) => c.get_db(),
            CommandConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The subscription connection (in a cluster, one per master behind one
/// handle). Cheap to clone; every clone is the same connection.
#[derive(Clone)]
pub enum PubSubConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl PubSubConn {
    /// Subscribes to one pub/sub channel. Returns once the server confirmed
    /// it; the confirmation also arrives as a push, in order with messages.
    pub async fn subscribe(&mut self, channel: &str, sharded: bool) -> RedisResult<()> {
        match (self, sharded) {
            // One channel per command: the connection takes a confirmation
            // push as the reply, so a command must expect exactly one.
            (PubSubConn::Single(c), true) => {
                redis::cmd("SSUBSCRIBE").arg(channel).exec_async(c).await
            }
            (PubSubConn::Single(c), false) => c.subscribe(channel).await,
            (PubSubConn::Cluster(c), true) => c.ssubscribe(channel).await,
            (PubSubConn::Cluster(c), false) => c.subscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str, sharded: bool) -> RedisResult<()> {
        match (self, sharded) {
            (PubSubConn::Single(c), true) => {
                redis::cmd("SUNSUBSCRIBE").arg(channel).exec_async(c).await
            }
            (PubSubConn::Single(c), false) => c.unsubscribe(channel).await,
            (PubSubConn::Cluster(c), true) => c.sunsubscribe(channel).await,
            (PubSubConn::Cluster(c), false) => c.unsubscribe(channel).await,
        }
    }

    /// `PING`. In a cluster, `CLUSTER INFO` on every master the cluster
    /// currently lists, by address (the cluster client's own `PING` skips
    /// nodes it can't reach, which would hide a master that is down), and
    /// each must say `cluster_state:ok` (a restarted master refuses keyed
    /// commands for a while after it answers pings).
    pub async fn ping(&mut self) -> RedisResult<()> {
        match self {
            PubSubConn::Single(c) => redis::cmd("PING").exec_async(c).await,
            PubSubConn::Cluster(c) => {
                let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
                let masters = masters_of(&slots);
                if masters.is_empty() {
                    return Err(RedisError::from((
                        ErrorKind::Client,
                        "the cluster lists no master",
                    )));
                }
                let mut info = redis::cmd("CLUSTER");
                info.arg("INFO");
                for (host, port) in masters {
                    let to = SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port,
                    };
                    let answer = c
                        .route_command(info.clone(), RoutingInfo::SingleNode(to))
                        .await?;
                    let mut texts = Vec::new();
                    collect_texts(&answer, &mut texts);
                    if !texts.iter().any(|t| t.contains("cluster_state:ok")) {
                        return Err(RedisError::from((
                            ErrorKind::Client,
                            "cluster state is not ok on",
                            format!("{host}:{port}"),
                        )));
                    }
                }
                Ok(())
            }
        }
    }

    /// The lowest major Redis version among the servers behind this
    /// connection, from `INFO server`.
    pub async fn server_major_version(&mut self) -> RedisResult<Option<u32>> {
        let mut info = redis::cmd("INFO");
        info.arg("server");
        let value: Value = match self {
            PubSubConn::Single(c) => info.query_async(c).await?,
            PubSubConn::Cluster(c) => info.query_async(c).await?,
        };
        Ok(min_major_version(&value))
    }
}

/// The (host, port) of every master in a `CLUSTER SLOTS` answer.
pub fn masters_of(slots: &Value) -> Vec<(String, u16)> {
    let mut masters: Vec<(String, u16)> = Vec::new();
    let Value::Array(ranges) = slots else {
        return masters;
    };
    for range in ranges {
        let Value::Array(fields) = range else {
            continue;
        };
        let Some(Value::Array(node)) = fields.get(2) else {
            continue;
        };
        let host = match node.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = node.get(1) else {
            continue;
        };
        let Ok(port) = u16::try_from(*port) else {
            continue;
        };
        if !masters.iter().any(|(h, p)| *h == host && *p == port) {
            masters.push((host, port));
        }
    }
    masters
}

/// Finds every `redis_version:X.Y.Z` in an `INFO` answer (one text, or one
/// per node in a cluster) and returns the lowest X.
pub fn min_major_version(value: &Value) -> Option<u32> {
    let mut texts = Vec::new();
    collect_texts(value, &mut texts);
    texts
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|line| line.trim().strip_prefix("redis_version:"))
        .filter_map(|v| v.split('.').next()?.parse().ok())
        .min()
}

fn collect_texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => out.push(s.clone()),
        Value::VerbatimString { text, .. } => out.push(text.clone()),
        Value::Array(items) | Value::Set(items) => items.iter().for_each(|v| collect_texts(v, out)),
        Value::Map(pairs) => pairs.iter().for_each(|(_, v)| collect_texts(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_the_lowest_of_all_nodes() {
        let info = |v: &str| {
            Value::BulkString(
                format!("# Server\r\nredis_version:{v}\r\nredis_mode:x\r\n").into_bytes(),
            )
        };
        assert_eq!(min_major_version(&info("7.0.15")), Some(7));
        let cluster = Value::Map(vec![
            (Value::SimpleString("a:1".into()), info("7.2.4")),
            (Value::SimpleString("b:2".into()), info("6.2.1")),
        ]);
        assert_eq!(min_major_version(&cluster), Some(6));
        assert_eq!(min_major_version(&Value::Nil), None);
    }

    #[test]
    fn masters_come_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |a, b, nodes: Vec<Value>| {
            let mut fields = vec![Value::Int(a), Value::Int(b)];
            fields.extend(nodes);
            Value::Array(fields)
        };
        let slots = Value::Array(vec![
            range(
                0,
                5460,
                vec![node("10.0.0.1", 7000), node("10.0.0.4", 7003)],
            ),
            range(5461, 10922, vec![node("10.0.0.2", 7001)]),
            range(10923, 12000, vec![node("10.0.0.1", 7000)]),
            range(12001, 16383, vec![node("10.0.0.3", 70000)]),
            Value::Nil,
        ]);
        assert_eq!(
            masters_of(&slots),
            [
                ("10.0.0.1".to_string(), 7000),
                ("10.0.0.2".to_string(), 7001)
            ]
        );
        assert!(masters_of(&Value::Nil).is_empty());
    }
}
