//! Stored forms that earlier versions wrote and this one reads.
//!
//! Before schema 10, an approval request that ended (its window closed, or
//! its job completed) was stored with two `reason` keys: the request's own
//! (the requester's), then its state's (`State::Ended`, now
//! `ended_because`). `serde_json` refuses a duplicate field, so such a row,
//! or a change that carries one, could not be read. [`read`] reads it: in
//! an object whose `state` is `ended`, the last `reason` is the state's.

use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// `text` as a `T`, reading the pre-schema-10 form of an ended approval
/// request too.
pub(crate) fn read<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    match serde_json::from_str(text) {
        Ok(value) => Ok(value),
        Err(error) if error.to_string().contains("duplicate field `reason`") => {
            let tree: Node = serde_json::from_str(text)?;
            let value = tree
                .repaired()
                .map_err(<serde_json::Error as serde::de::Error>::custom)?;
            serde_json::from_value(value)
        }
        Err(error) => Err(error),
    }
}

/// A JSON value whose objects keep every key, duplicates included, in
/// order.
enum Node {
    Scalar(Value),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    /// As a `Value`, with an ended request's second `reason` renamed; any
    /// other duplicate key is an error (which of the two is meant is not
    /// known).
    fn repaired(self) -> Result<Value, String> {
        match self {
            Self::Scalar(value) => Ok(value),
            Self::Array(items) => Ok(Value::Array(
                items
                    .into_iter()
                    .map(Self::repaired)
                    .collect::<Result<_, _>>()?,
            )),
            Self::Object(mut pairs) => {
                let ended = pairs.iter().any(|(k, v)| {
                    k == "state" && matches!(v, Self::Scalar(Value::String(s)) if s == "ended")
                });
                let reasons = pairs.iter().filter(|(k, _)| k == "reason").count();
                if ended
                    && reasons == 2
                    && let Some(last) = pairs.iter_mut().rev().find(|(k, _)| k == "reason")
                {
                    last.0 = "ended_because".to_owned();
                }
                let mut map = Map::new();
                for (key, value) in pairs {
                    let value = value.repaired()?;
                    if map.contains_key(&key) {
                        return Err(format!("duplicate field `{key}`"));
                    }
                    map.insert(key, value);
                }
                Ok(Value::Object(map))
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut pairs = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Node>()? {
            pairs.push((key, value));
        }
        Ok(Node::Object(pairs))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Change, ChangeRecord};
    use stint_core::approval::{ApprovalRequest, Elevation, Requester, State};
    use stint_core::scope::Scope;

    /// An ended request, and the text schema 9 stored for it (the state's
    /// `reason` after the request's own).
    fn ended() -> (ApprovalRequest, String) {
        let mut request = ApprovalRequest::new(
            "apr-1".into(),
            Requester {
                workload: "deployer".into(),
                client_id: "deployer".into(),
                job: "job-7".into(),
                step: "deploy/prod".into(),
                audience: "https://k8s.example".into(),
            },
            vec![Scope::parse("deploy:k8s/prod/web").unwrap()],
            Some("hotfix for INC-42".into()),
            Some(600),
            Elevation {
                approver_groups: ["sre".to_owned()].into(),
                quorum: 1,
                max_duration: 1800,
                max_wait: 600,
                reason_required: true,
            },
            1_000,
        )
        .unwrap();
        assert!(request.end("the job completed"));
        let text = serde_json::to_string(&request)
            .unwrap()
            .replace("\"ended_because\":", "\"reason\":");
        assert_eq!(text.matches("\"reason\":").count(), 2, "{text}");
        (request, text)
    }

    #[test]
    fn an_approval_ended_before_schema_10_reads() {
        let (request, text) = ended();
        assert!(serde_json::from_str::<ApprovalRequest>(&text).is_err());
        let stored = crate::sqlite::stored_approval(&text, 3).unwrap();
        assert_eq!(stored.request, request);
        assert_eq!(stored.request.reason.as_deref(), Some("hotfix for INC-42"));
        assert_eq!(
            stored.request.state,
            State::Ended {
                reason: "the job completed".into()
            }
        );
        let change = serde_json::to_string(&Change::Approval {
            request: Box::new(request.clone()),
            revision: 3,
        })
        .unwrap()
        .replace("\"ended_because\":", "\"reason\":");
        let record = crate::change_from_json(7, &change).unwrap();
        assert_eq!(
            record,
            ChangeRecord {
                seq: 7,
                change: Change::Approval {
                    request: Box::new(request),
                    revision: 3
                }
            }
        );
    }

    #[test]
    fn other_broken_text_stays_an_error() {
        assert!(super::read::<serde_json::Value>("{\"reason\":").is_err());
        // Two `reason` keys where the state is not `ended`: not repaired.
        let (_, text) = ended();
        let other = text.replace("\"state\":\"ended\"", "\"state\":\"expired\"");
        assert!(super::read::<ApprovalRequest>(&other).is_err());
    }
}
