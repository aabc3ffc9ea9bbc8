//! The requests the relay understands, read once from their envelope ([`Request`]) into types:
//! what each role may send and what each body says. Handlers match on variants and never read
//! a body again. A body that does not say what its type needs is refused here with the reason
//! (`400`); a type the relay does not know, or one this role may not send, is [`Unknown`].

use serde_json::Value;

use super::protocol::Request;
use super::routing::Availability;
use super::vocabulary::RelayError;
use crate::ids::ConversationId;

/// A request both roles send.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Shared {
    /// `ms.PublishEvent`: an event for a conversation, checked by `conversations` (its limits
    /// are the relay's config); the client's `eventId` when it gave a usable one.
    PublishEvent {
        dialog: ConversationId,
        event: Value,
        client_event_id: Option<String>,
    },
    /// `ms.SubscribeMessagingEvents`: a conversation's events from a sequence on.
    SubscribeMessagingEvents {
        dialog: ConversationId,
        from_seq: i64,
    },
    /// `cqm.SubscribeExConversations`: the participant's conversations in these states
    /// (none named: every state).
    SubscribeExConversations {
        states: Vec<String>,
    },
    /// `cqm.UnsubscribeExConversations`.
    UnsubscribeExConversations {
        subscription: String,
    },
    /// `cm.UpdateConversationField`: close, or (an agent) transfer back to the queue.
    UpdateConversationField {
        conversation: ConversationId,
        change: FieldChange,
    },
    GetClock,
    KeepAlive,
}

/// What `cm.UpdateConversationField` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FieldChange {
    /// `ConversationStateField` `CLOSE`.
    Close,
    /// `ParticipantsChange` `REMOVE` `ASSIGNED_AGENT`, with an optional `Skill` `UPDATE`.
    Transfer { skill: Option<String> },
}

/// What a consumer sends.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ConsumerRequest {
    /// `InitConnection` (its token is in the envelope's headers).
    InitConnection,
    /// `cm.ConsumerRequestConversation`.
    RequestConversation,
    Shared(Shared),
}

/// What an agent sends.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum AgentRequest {
    /// `InitConnection`: the bearer authenticated the socket already.
    InitConnection,
    /// `routing.SetAgentState`.
    SetAgentState(Availability),
    /// `routing.SubscribeRoutingTasks`.
    SubscribeRoutingTasks,
    /// `routing.SubscribeAgentsState`.
    SubscribeAgentsState,
    /// `routing.UpdateRingState`: the ring's conversation, accepted (`true`) or rejected.
    UpdateRingState {
        conversation: ConversationId,
        accept: bool,
    },
    Shared(Shared),
}

/// Why a request cannot be handled.
#[derive(Debug)]
pub(super) enum Unreadable {
    /// A type the relay does not know, or not one this role sends (its name).
    Unknown(String),
    /// Its body does not say what the type needs.
    Body(RelayError),
}

impl From<RelayError> for Unreadable {
    fn from(e: RelayError) -> Self {
        Unreadable::Body(e)
    }
}

/// Who is asking: the same body can be refused with a different reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asker {
    Consumer,
    Agent,
}

impl ConsumerRequest {
    pub fn parse(r: &Request) -> Result<ConsumerRequest, Unreadable> {
        Ok(match r.kind.as_str() {
            "InitConnection" => ConsumerRequest::InitConnection,
            "cm.ConsumerRequestConversation" => ConsumerRequest::RequestConversation,
            _ => ConsumerRequest::Shared(Shared::parse(r, Asker::Consumer)?),
        })
    }
}

impl AgentRequest {
    pub fn parse(r: &Request) -> Result<AgentRequest, Unreadable> {
        let body = &r.body;
        Ok(match r.kind.as_str() {
            "InitConnection" => AgentRequest::InitConnection,
            "routing.SetAgentState" => AgentRequest::SetAgentState(
                body.get("availability")
                    .and_then(Value::as_str)
                    .and_then(Availability::parse)
                    .ok_or_else(|| {
                        bad("body.availability must be ONLINE, AWAY, BACK_SOON or OFFLINE")
                    })?,
            ),
            "routing.SubscribeRoutingTasks" => AgentRequest::SubscribeRoutingTasks,
            "routing.SubscribeAgentsState" => AgentRequest::SubscribeAgentsState,
            "routing.UpdateRingState" => {
                let conversation = ConversationId::new(id_field(body, "ringId")?);
                let accept = match body.get("ringState").and_then(Value::as_str) {
                    Some("ACCEPTED") => true,
                    Some("REJECTED") => false,
                    _ => return Err(bad("body.ringState must be ACCEPTED or REJECTED").into()),
                };
                AgentRequest::UpdateRingState {
                    conversation,
                    accept,
                }
            }
            _ => AgentRequest::Shared(Shared::parse(r, Asker::Agent)?),
        })
    }
}

impl Shared {
    fn parse(r: &Request, asker: Asker) -> Result<Shared, Unreadable> {
        let body = &r.body;
        Ok(match r.kind.as_str() {
            "ms.PublishEvent" => {
                let dialog = ConversationId::new(id_field(body, "dialogId")?);
                let event = body
                    .get("event")
                    .ok_or_else(|| bad("body.event is missing"))?
                    .clone();
                let client_event_id = event
                    .get("eventId")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty() && s.len() <= 64)
                    .map(str::to_string);
                Shared::PublishEvent {
                    dialog,
                    event,
                    client_event_id,
                }
            }
            "ms.SubscribeMessagingEvents" => {
                let dialog = ConversationId::new(id_field(body, "dialogId")?);
                // As the history REST reads it: a sequence, 0 or more.
                let from_seq = match body.get("fromSeq") {
                    None | Some(Value::Null) => 0,
                    Some(v) => v
                        .as_i64()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| bad("body.fromSeq must be a sequence (0 or more)"))?,
                };
                Shared::SubscribeMessagingEvents { dialog, from_seq }
            }
            "cqm.SubscribeExConversations" => Shared::SubscribeExConversations {
                states: body
                    .get("convState")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            "cqm.UnsubscribeExConversations" => Shared::UnsubscribeExConversations {
                subscription: id_field(body, "subscriptionId")?,
            },
            "cm.UpdateConversationField" => Shared::UpdateConversationField {
                conversation: ConversationId::new(id_field(body, "conversationId")?),
                change: field_change(body, asker)?,
            },
            "GetClock" => Shared::GetClock,
            "KeepAlive" => Shared::KeepAlive,
            other => return Err(Unreadable::Unknown(other.to_string())),
        })
    }
}

/// `cm.UpdateConversationField`'s `conversationField` list: a close, or a transfer (with an
/// optional skill), never both.
fn field_change(body: &Value, asker: Asker) -> Result<FieldChange, RelayError> {
    let fields = body
        .get("conversationField")
        .and_then(Value::as_array)
        .filter(|f| !f.is_empty() && f.len() <= 8)
        .ok_or_else(|| bad("body.conversationField must be a list of 1 to 8"))?;
    let mut close = false;
    let mut leave = false;
    let mut skill = None;
    for f in fields {
        let text = |name: &str| f.get(name).and_then(Value::as_str);
        match text("field") {
            Some("ConversationStateField") if text("conversationState") == Some("CLOSE") => {
                close = true;
            }
            Some("ParticipantsChange")
                if text("type") == Some("REMOVE") && text("role") == Some("ASSIGNED_AGENT") =>
            {
                leave = true;
            }
            Some("Skill") if text("type").unwrap_or("UPDATE") == "UPDATE" => {
                skill = Some(
                    text("skill")
                        .filter(|s| !s.is_empty() && s.len() <= 64)
                        .ok_or_else(|| bad("a Skill change needs a skill id"))?
                        .to_string(),
                );
            }
            _ => {
                return Err(bad(match asker {
                    Asker::Consumer => {
                        "a consumer may only close its conversation (ConversationStateField CLOSE)"
                    }
                    Asker::Agent => {
                        "supported: ConversationStateField CLOSE, ParticipantsChange REMOVE ASSIGNED_AGENT, Skill UPDATE"
                    }
                }));
            }
        }
    }
    match (close, leave, skill) {
        (true, false, None) => Ok(FieldChange::Close),
        (false, true, skill) => Ok(FieldChange::Transfer { skill }),
        (false, false, Some(_)) => Err(bad(
            "a Skill change goes with ParticipantsChange REMOVE ASSIGNED_AGENT (a transfer)",
        )),
        _ => Err(bad("close or transfer, not both in one request")),
    }
}

fn bad(why: &str) -> RelayError {
    RelayError::BadRequest(why.to_string())
}

/// `body.{field}`: an id (1 to 64 characters).
pub(super) fn id_field(body: &Value, field: &str) -> Result<String, RelayError> {
    body.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .map(str::to_string)
        .ok_or_else(|| RelayError::BadRequest(format!("body.{field} must be an id")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(kind: &str, body: Value) -> Request {
        Request {
            id: "1".into(),
            kind: kind.into(),
            body,
            headers: Vec::new(),
        }
    }

    fn reason(e: Unreadable) -> String {
        match e {
            Unreadable::Body(RelayError::BadRequest(why)) => why,
            other => panic!("not a body refusal: {other:?}"),
        }
    }

    #[test]
    fn each_role_reads_its_own_types_and_the_shared_ones() {
        let r = request("cm.ConsumerRequestConversation", json!({}));
        assert_eq!(
            ConsumerRequest::parse(&r).unwrap(),
            ConsumerRequest::RequestConversation
        );
        assert!(matches!(
            AgentRequest::parse(&r),
            Err(Unreadable::Unknown(kind)) if kind == "cm.ConsumerRequestConversation"
        ));
        let r = request("routing.SetAgentState", json!({"availability": "AWAY"}));
        assert_eq!(
            AgentRequest::parse(&r).unwrap(),
            AgentRequest::SetAgentState(Availability::Away)
        );
        assert!(matches!(
            ConsumerRequest::parse(&r),
            Err(Unreadable::Unknown(_))
        ));
        let r = request("ms.SubscribeMessagingEvents", json!({"dialogId": "d1"}));
        let expected = Shared::SubscribeMessagingEvents {
            dialog: ConversationId::new("d1"),
            from_seq: 0,
        };
        assert_eq!(
            ConsumerRequest::parse(&r).unwrap(),
            ConsumerRequest::Shared(expected.clone())
        );
        assert_eq!(
            AgentRequest::parse(&r).unwrap(),
            AgentRequest::Shared(expected)
        );
    }

    #[test]
    fn a_body_that_does_not_say_what_its_type_needs_is_refused_with_the_reason() {
        let refused = |kind: &str, body: Value| {
            reason(AgentRequest::parse(&request(kind, body)).unwrap_err())
        };
        assert_eq!(
            refused("ms.PublishEvent", json!({"event": {}})),
            "body.dialogId must be an id"
        );
        assert_eq!(
            refused("ms.PublishEvent", json!({"dialogId": "d"})),
            "body.event is missing"
        );
        assert_eq!(
            refused(
                "ms.SubscribeMessagingEvents",
                json!({"dialogId": "d", "fromSeq": -1})
            ),
            "body.fromSeq must be a sequence (0 or more)"
        );
        assert_eq!(
            refused(
                "routing.UpdateRingState",
                json!({"ringId": "c", "ringState": "MAYBE"})
            ),
            "body.ringState must be ACCEPTED or REJECTED"
        );
        assert_eq!(
            refused("routing.SetAgentState", json!({"availability": "BUSY"})),
            "body.availability must be ONLINE, AWAY, BACK_SOON or OFFLINE"
        );
        let close = json!({"field": "ConversationStateField", "conversationState": "CLOSE"});
        let leave =
            json!({"field": "ParticipantsChange", "type": "REMOVE", "role": "ASSIGNED_AGENT"});
        let skill = json!({"field": "Skill", "type": "UPDATE", "skill": "billing"});
        let update = |fields: Value| json!({"conversationId": "c", "conversationField": fields});
        assert_eq!(
            refused("cm.UpdateConversationField", update(json!([close, leave]))),
            "close or transfer, not both in one request"
        );
        assert_eq!(
            refused("cm.UpdateConversationField", update(json!([skill]))),
            "a Skill change goes with ParticipantsChange REMOVE ASSIGNED_AGENT (a transfer)"
        );
        assert_eq!(
            refused("cm.UpdateConversationField", update(json!([]))),
            "body.conversationField must be a list of 1 to 8"
        );
        // The same unsupported field, refused with each role's own reason.
        let odd = update(json!([{"field": "Other"}]));
        assert_eq!(
            reason(
                ConsumerRequest::parse(&request("cm.UpdateConversationField", odd.clone()))
                    .unwrap_err()
            ),
            "a consumer may only close its conversation (ConversationStateField CLOSE)"
        );
        assert!(refused("cm.UpdateConversationField", odd).starts_with("supported: "));
        assert_eq!(
            AgentRequest::parse(&request(
                "cm.UpdateConversationField",
                update(json!([leave, skill]))
            ))
            .unwrap(),
            AgentRequest::Shared(Shared::UpdateConversationField {
                conversation: ConversationId::new("c"),
                change: FieldChange::Transfer {
                    skill: Some("billing".into())
                }
            })
        );
    }
}
