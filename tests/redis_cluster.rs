//! The Redis bus against a real 3-master Redis Cluster (made per test with
//! `redis-cli --cluster create` on free loopback ports): the same
//! end-to-end checks as on one server, with channels spread over shards.

mod common;

use std::time::Duration;

use common::redis::*;
use common::*;

#[tokio::test]
async fn cluster_fan_out_resume_and_concurrent_ids() {
    let cluster = RedisCluster::start().await;
    let bus = bus_args(&cluster.url(), true);
    // Channels stay subscribed for the whole test (counted at the end).
    let linger = ["--redis-unsubscribe-delay", "120s"];
    let a = start_gateway(&bus, &linger).await;
    // Node B starts from another cluster node: either one finds the rest.
    let bus_b = bus_args(&cluster.nodes[2].url(), true);
    let b = start_gateway(&bus_b, &linger).await;

    let feed = cluster.channel_on("feed", 1);
    fan_out_across_nodes(&a, &b, &feed).await;

    let resume = cluster.channel_on("resume", 2);
    resume_on_other_node(&a, &b, &resume).await;

    // One channel per shard.
    let channels: Vec<String> = (0..3).map(|n| cluster.channel_on("count", n)).collect();
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    concurrent_publishers(&a, &b, &names).await;

    // Sharded pub/sub: each channel is subscribed on its own shard only.
    let mut clients = Vec::new();
    for channel in &channels {
        let mut ws = WsClient::connect(&a.ws_url(&format!("/rt/ws/{channel}"))).await;
        ws.expect_control("subscribed", T5).await;
        clients.push(ws);
    }
    for (n, channel) in channels.iter().enumerate() {
        let pubsub = format!("pollbridge:{{{channel}}}");
        for (m, node) in cluster.nodes.iter().enumerate() {
            let answer = node.cli(&["pubsub", "shardnumsub", &pubsub]);
            let count: Vec<&str> = answer.lines().collect();
            let want = if m == n { "1" } else { "0" };
            assert_eq!(
                count.get(1).copied(),
                Some(want),
                "{channel} on node {m}: {answer}"
            );
        }
    }
    // feed, resume and the three count channels.
    assert_eq!(
        a.metric("pollbridge_bus_subscriptions", &[]).await,
        Some(5.0)
    );
}

#[tokio::test]
async fn cluster_master_restart_mid_stream_loses_nothing_acknowledged() {
    let mut cluster = RedisCluster::start().await;
    let bus = bus_args(&cluster.url(), true);
    let a = start_gateway(&bus, FAST_RECOVERY).await;
    let b = start_gateway(&bus, FAST_RECOVERY).await;
    // The channel lives on the node that is restarted (not the one the
    // gateways were pointed at).
    let channel = cluster.channel_on("steady", 1);
    survive_restart(&a, &b, &channel, || {
        cluster.restart_node(1, Duration::from_millis(1200))
    })
    .await;
}
