//! Integration tests: the real `brandgate` binary on ephemeral loopback ports, talked to over
//! TLS and HTTP/2 as the platform would, with fake APNs and FCM servers speaking the real
//! protocols. One test binary (one link) with a module per area.

#[path = "../support/mod.rs"]
mod support;

mod agent_saml;
mod agent_sso;
mod agents;
mod attacks;
mod backend_tokens;
mod caller_auth;
mod cli_docs;
mod client_address;
mod config_check;
mod config_show;
mod egress;
mod feedback;
mod identity;
mod identity_config;
mod layering;
mod lifecycle;
mod login;
mod overload;
mod push_apns;
mod push_dedupe;
mod push_fcm;
mod push_huawei;
mod relay_agent;
mod relay_consumer;
mod relay_edges;
mod relay_external;
mod relay_nodes;
mod relay_webhooks;
mod security_headers;
mod store;
mod store_outbox;
mod workspace;
