//! How this member reaches its peers: the addresses in its own configuration win over the ones the
//! replicated membership records (which are whatever the initializing member wrote), so each
//! member can reach the others by its own path (NAT, a test's fault relays); members added later
//! are reached at their recorded address. Owns only that choice; the transport is `TcpNetwork`.

use super::types::{MemberNode, TypeConfig};
use crate::raft::{PeerClient, TcpNetwork};
use openraft::RaftNetworkFactory;
use std::collections::BTreeMap;

/// openraft's network factory for a member: `TcpNetwork` with per-member address overrides.
pub struct RoutedNetwork {
    inner: TcpNetwork<TypeConfig>,
    routes: BTreeMap<u64, String>,
}

impl RoutedNetwork {
    pub fn new(inner: TcpNetwork<TypeConfig>, routes: BTreeMap<u64, String>) -> Self {
        RoutedNetwork { inner, routes }
    }
}

impl RaftNetworkFactory<TypeConfig> for RoutedNetwork {
    type Network = PeerClient<TypeConfig>;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> Self::Network {
        match self.routes.get(&target) {
            Some(addr) if *addr != node.addr => {
                let routed = MemberNode { name: node.name.clone(), addr: addr.clone() };
                self.inner.new_client(target, &routed).await
            }
            _ => self.inner.new_client(target, node).await,
        }
    }
}
