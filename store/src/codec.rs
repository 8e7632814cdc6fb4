//! Turns domain events into stored events and back.
//!
//! Domain events serialize adjacently tagged (`{"type": ..., "data": ...}`); the store keeps
//! the type name and the data in separate columns, so the type can be filtered and upcast
//! without parsing the body.

use crate::{EventData, Metadata, RecordedEvent};
use neulbi_domain::DomainEvent;
use serde_json::Value;
use thiserror::Error;
use uuid::Uuid;

/// An event that could not be turned into its stored form or back into the domain type.
#[derive(Debug, Error)]
#[error("cannot decode event {event_type} at position {position}: {reason}")]
pub struct CodecError {
    /// The stored type name.
    pub event_type: String,
    /// The event's global position (0 when encoding).
    pub position: u64,
    /// The encoder's or decoder's message.
    pub reason: String,
}

/// Encodes one domain event with a fresh UUIDv7 id and the given metadata.
pub fn encode<E: DomainEvent>(event: &E, metadata: &Metadata) -> Result<EventData, CodecError> {
    let value = serde_json::to_value(event).map_err(|e| CodecError {
        event_type: event.event_type().to_owned(),
        position: 0,
        reason: format!("cannot encode: {e}"),
    })?;
    let data = match value {
        Value::Object(mut map) => map.remove("data").unwrap_or(Value::Null),
        other => other,
    };
    Ok(EventData {
        event_id: Uuid::now_v7(),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        data,
        metadata: metadata.clone(),
        recorded_at: None,
    })
}

/// Decodes a stored event into the domain type, upcasting old schema versions first.
///
/// The adjacently tagged shape `{"type", "data"}` is presented to serde as a borrowed map,
/// so the event's data is not copied (this runs for every event of every rebuild).
pub fn decode<E: DomainEvent>(recorded: &RecordedEvent) -> Result<E, CodecError> {
    let ty = Value::String(recorded.event_type.clone());
    let upcast_data = upcast(
        &recorded.event_type,
        recorded.schema_version,
        &recorded.data,
    );
    let data = upcast_data.as_ref().unwrap_or(&recorded.data);
    let mut entries: Vec<(&str, &Value)> = vec![("type", &ty)];
    if !data.is_null() {
        entries.push(("data", data));
    }
    let map = serde::de::value::MapDeserializer::<_, serde_json::Error>::new(entries.into_iter());
    E::deserialize(map).map_err(|e| CodecError {
        event_type: recorded.event_type.clone(),
        position: recorded.position,
        reason: e.to_string(),
    })
}

/// Turns an old version of an event's data into the current shape, so the log is never
/// rewritten. `None` means the data is current (nothing copied). Each arm documents the
/// change it undoes.
pub fn upcast(event_type: &str, schema_version: u32, data: &Value) -> Option<Value> {
    match (event_type, schema_version) {
        ("MessagePosted", 1) => {
            // v1 stored `body` as a plain string; v2 marks it as the author's personal data.
            let author = data.get("author")?.clone();
            let text = data.get("body").filter(|b| b.is_string())?.clone();
            let mut current = data.clone();
            current["body"] =
                serde_json::json!({ "$personal": { "owner": author, "value": text } });
            Some(current)
        }
        ("Requested", 1) => {
            // v1 named one `invitee` and no policy; v2 rings a list under the policy that
            // was the only one then (8 participants, 30 s ring, 60 s grace).
            let invitee = data.get("invitee")?.clone();
            let mut current = data.clone();
            let object = current.as_object_mut()?;
            object.remove("invitee");
            object.insert("invitees".into(), Value::Array(vec![invitee]));
            object.insert(
                "policy".into(),
                serde_json::to_value(neulbi_domain::call_session::CallPolicy::default()).ok()?,
            );
            Some(current)
        }
        _ => None,
    }
}
