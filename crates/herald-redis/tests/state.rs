//! The `ClusterState` conformance suite (`herald-core/tests/suite/state.rs`) on [`herald_redis::RedisState`]
//! against a real `redis-server`: counts and presence decided once for the whole cluster. What only
//! Redis has (leases, the reaper, reconcile after lost data) is tested in `reaper.rs` and `reconcile.rs`.

mod cluster_harness;
#[path = "../../herald-core/tests/suite/cluster.rs"]
mod cluster_suite;
mod common;
#[path = "../../herald-core/tests/suite/state.rs"]
#[macro_use]
mod state_suite;

use cluster_harness::redis;

state_conformance!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    redis().await
);
