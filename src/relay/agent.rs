//! An agent's WebSocket: `GET /ws/agent` with `Authorization: Bearer <session>` (the bearer
//! from the agent login, `POST /api/account/{account}/login`) or, from the browser workspace,
//! the session cookie and an allowed `Origin`; also at the platform's own path
//! `/ws_api/account/{account}/messaging/brand/{bearer}`.
//!
//! Besides the requests every socket has (`socket`), an agent sets its availability and
//! answers rings (`routing`). It sees only the conversations routed to and taken by it. The
//! session is read again before a request when [`RECHECK`] has passed, every [`IDLE_RECHECK`]
//! anyway, and at its end: a refresh (`POST .../refresh`) extends it and the socket lives on;
//! a logout, a disabled agent or a reset password ends the socket with 4401; a session that
//! ran out gets a `brandgate.SessionExpired` notification and a close with 4410.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde_json::json;
use tokio::sync::watch;

use super::accounts::{AgentAuthError, AgentPrincipal};
use super::close_code;
use super::protocol::{notification, response, text_response};
use super::refusal::HttpRefusal;
use super::requests::{AgentRequest, Unreadable};
use super::routing::{self, Desk};
use super::service::RelayService;
use super::socket::{Link, Next, Role, error_response, run, unknown_type, websocket};
use super::vocabulary::{Participant, RelayError};
use crate::client_address::ClientIp;
use crate::clock::Clock;

/// How often, at most, a busy socket re-reads its session.
const RECHECK: Duration = Duration::from_secs(5);
/// How often an idle socket's session is read.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// `GET /ws_api/account/{account}/messaging/brand/{bearer}`.
pub async fn platform_path(
    State(relay): State<RelayService>,
    Path((account, bearer)): Path<(String, String)>,
    ClientIp(source): ClientIp,
    ws: WebSocketUpgrade,
) -> Response {
    if account != relay.inner.config.account {
        return HttpRefusal::NotFound("no such account".into()).into_response();
    }
    upgrade(relay, &bearer, source, ws).await
}

/// `GET /ws/agent`: the session as `Authorization: Bearer <bearer>` (programs), or as the
/// session cookie from a browser page of an allowed origin (browsers cannot set headers on a
/// WebSocket; the `Origin` check keeps another site's page from using the agent's cookie).
pub async fn own_path(
    State(relay): State<RelayService>,
    uri: http::Uri,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(bearer) = crate::http_auth::authorization_token(&headers, &["bearer"]) {
        let bearer = bearer.to_string();
        return upgrade(relay, &bearer, source, ws).await;
    }
    let Some(bearer) = crate::http_auth::cookie(&headers, super::login::SESSION_COOKIE) else {
        return HttpRefusal::NoAgentSession.into_response();
    };
    if !origin_allowed(&headers, &uri, &relay.inner.config.workspace.origins) {
        tracing::warn!("an agent socket with the session cookie came from another origin; refused");
        return HttpRefusal::ForeignOrigin.into_response();
    }
    let bearer = bearer.to_string();
    upgrade(relay, &bearer, source, ws).await
}

/// Whether the request's `Origin` is one of `allowed`, or, with none configured, the origin
/// the request is addressed to (`https://` and its `Host`). No `Origin` is not allowed: every
/// browser sends one on a WebSocket.
fn origin_allowed(headers: &HeaderMap, uri: &http::Uri, allowed: &[String]) -> bool {
    let Some(origin) = headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a.eq_ignore_ascii_case(origin));
    }
    crate::http_auth::request_authority(headers, uri)
        .is_some_and(|host| origin.eq_ignore_ascii_case(&format!("https://{host}")))
}

async fn upgrade(
    relay: RelayService,
    bearer: &str,
    source: Option<IpAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(permit) = relay.inner.sockets.clone().try_acquire_owned() else {
        return HttpRefusal::TooManySockets.into_response();
    };
    let principal = match relay.inner.accounts.authenticate(bearer, source).await {
        Ok(p) => p,
        Err(AgentAuthError::OutsideNetworks) => {
            return HttpRefusal::OutsideNetworks.into_response();
        }
        Err(e @ AgentAuthError::Unavailable(_)) => {
            tracing::warn!(error = %e, "an agent's session could not be checked");
            return HttpRefusal::SessionsUnavailable.into_response();
        }
        Err(e) => {
            tracing::info!(reason = %e, "an agent's session was refused on the upgrade");
            return HttpRefusal::SessionNotValid.into_response();
        }
    };
    let bearer = bearer.to_string();
    websocket(ws, &relay.inner.config).on_upgrade(move |socket| async move {
        let _permit = permit;
        let _tracked = relay.inner.sessions.token();
        let _open = relay.inner.metrics.socket_opened("agent");
        tracing::info!(agent = %principal.agent_id, "an agent connected");
        let link = Link::new(relay, socket);
        let role = AgentRole {
            principal,
            bearer,
            source,
            checked: Instant::now(),
            desk: watch::Sender::new(Desk::default()),
            clock: link.relay.inner.clock.clone(),
        };
        run(role, link).await;
    })
}

/// An agent's side of a socket.
struct AgentRole {
    principal: AgentPrincipal,
    bearer: String,
    /// The client address the socket was opened from (checked again with the session).
    source: Option<IpAddr>,
    /// When the session was last read.
    checked: Instant,
    desk: watch::Sender<Desk>,
    clock: Arc<dyn Clock>,
}

impl Role for AgentRole {
    fn deadline(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let end = now
            + self
                .principal
                .expires_at
                .duration_since(self.clock.now())
                .unwrap_or(Duration::ZERO);
        let next_check = now + IDLE_RECHECK.saturating_sub(self.checked.elapsed());
        end.min(next_check)
    }

    async fn deadline_passed(&mut self, link: &mut Link) -> Next {
        match self.recheck(link).await {
            Ok(()) => Next::Continue,
            Err(next) => next,
        }
    }

    async fn frame(&mut self, link: &mut Link, text: &str) -> Next {
        let due = self.checked.elapsed() >= RECHECK;
        if (due || self.principal.expires_at <= self.clock.now())
            && let Err(next) = self.recheck(link).await
        {
            return next;
        }
        let request = match link.read(text).await {
            Ok(r) => r,
            Err(next) => return next,
        };
        let who = Participant::Agent(self.principal.agent_id.clone());
        let parsed = match AgentRequest::parse(&request) {
            Ok(parsed) => parsed,
            Err(Unreadable::Unknown(kind)) => {
                return link.reply(unknown_type(&request.id, &kind)).await;
            }
            Err(Unreadable::Body(e)) => return link.reply(error_response(&request.id, &e)).await,
        };
        let id = &request.id;
        let answer = match parsed {
            // The bearer authenticated the socket already.
            AgentRequest::InitConnection => Ok(text_response(id, 200, "OK")),
            AgentRequest::SetAgentState(availability) => {
                self.desk.send_modify(|d| d.availability = availability);
                Ok(text_response(id, 200, "OK"))
            }
            AgentRequest::SubscribeRoutingTasks => self.subscribe(link, id, true),
            AgentRequest::SubscribeAgentsState => self.subscribe(link, id, false),
            AgentRequest::UpdateRingState {
                conversation,
                accept: true,
            } => link
                .conversations()
                .take(&self.principal.agent_id, &conversation)
                .await
                .map(|()| text_response(id, 200, "OK")),
            AgentRequest::UpdateRingState {
                conversation,
                accept: false,
            } => {
                match link
                    .conversations()
                    .reject(&self.principal.agent_id, &conversation)
                    .await
                {
                    Ok(()) => {
                        // This socket's ring ends as REJECTED (the store keeps the rejection;
                        // this set only names how its rings end). Bounded: all forgotten
                        // at the cap, and then labelled CANCELLED, which is still true.
                        self.desk.send_modify(|d| {
                            if d.rejected.len() >= 1000 {
                                d.rejected.clear();
                            }
                            d.rejected.insert(conversation);
                        });
                        Ok(text_response(id, 200, "OK"))
                    }
                    Err(e) => Err(e),
                }
            }
            AgentRequest::Shared(shared) => link.shared(&who, id, shared).await,
        };
        let frame = answer.unwrap_or_else(|e| error_response(&request.id, &e));
        link.reply(frame).await
    }
}

impl AgentRole {
    /// Reads the session again (a refresh extends it; a logout, a disabled agent or a new
    /// password ends it). `Err` says how the socket closes: 4401 when the session ended, 4410
    /// after a `brandgate.SessionExpired` notification when it ran out.
    async fn recheck(&mut self, link: &mut Link) -> Result<(), Next> {
        let answer = link
            .relay
            .inner
            .accounts
            .authenticate(&self.bearer, self.source)
            .await;
        self.checked = Instant::now();
        match answer {
            Ok(p) => {
                self.principal = p;
                Ok(())
            }
            // The store cannot say: the session was valid until its known end.
            Err(AgentAuthError::Unavailable(e)) if self.principal.expires_at > self.clock.now() => {
                tracing::warn!(error = %e, "an agent's session could not be checked again");
                Ok(())
            }
            Err(_) if self.principal.expires_at <= self.clock.now() => {
                let _ = link.send(expired_notification()).await;
                Err(Next::Close(close_code::TOKEN_EXPIRED, "session expired"))
            }
            Err(_) => Err(Next::Close(
                close_code::UNAUTHENTICATED,
                "the session ended",
            )),
        }
    }

    /// `routing.SubscribeRoutingTasks` (`tasks`) or `routing.SubscribeAgentsState`.
    fn subscribe(
        &mut self,
        link: &mut Link,
        req_id: &str,
        tasks: bool,
    ) -> Result<String, RelayError> {
        let id = uuid::Uuid::new_v4().to_string();
        let token = link.new_subscription(&id)?;
        let desk = self.desk.subscribe();
        let out = link.outbox.clone();
        if tasks {
            let conversations = link.conversations();
            let agent = self.principal.agent_id.clone();
            let subscription = id.clone();
            link.start_after_reply(async move {
                let result =
                    routing::ring(conversations, agent, subscription, desk, out.clone(), token)
                        .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "a routing subscription failed; closing its socket");
                    out.close(
                        close_code::SUBSCRIPTION_FAILED,
                        "the subscription failed; subscribe again",
                    );
                }
            });
        } else {
            link.start_after_reply(routing::report_state(id.clone(), desk, out, token));
        }
        Ok(response(
            req_id,
            200,
            "GenericSubscribeResponse",
            json!({ "subscriptionId": id }),
        ))
    }
}

/// The frame telling an agent its session ran out (not in the platform's published schemas).
fn expired_notification() -> String {
    notification(
        "brandgate.SessionExpired",
        json!({ "reason": "the agent's session expired; log in again" }),
    )
}
