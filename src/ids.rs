//! The ids that cross modules, each its own type, so a consumer's id cannot be passed where a
//! conversation's is expected: [`ConversationId`], [`ConsumerId`] and [`AgentId`]. They are
//! text on the wire and in the store (serialised as the bare string), and checked where they
//! enter (the relay's request parser, the identity token, the store's own ids).

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> $name {
                $name(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> $name {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> $name {
                $name(id.to_string())
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

text_id!(
    /// A conversation, as the relay names it (`conversationId` on the wire).
    ConversationId
);
text_id!(
    /// A consumer: the subject of its identity token (`<issuer>:<sub>` for external issuers).
    ConsumerId
);
text_id!(
    /// An agent, by the id its account gave it (not its username).
    AgentId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_their_text_on_the_wire() {
        let id = ConversationId::new("c-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"c-1\"");
        let back: ConsumerId = serde_json::from_str("\"alice\"").unwrap();
        assert_eq!(back, "alice");
        assert_eq!(AgentId::new("a").to_string(), "a");
    }
}
