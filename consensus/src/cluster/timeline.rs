//! The `status` and `history` values: the leader's last known WAL position and slot positions,
//! and the list of timeline switches (promotions) with when and to whom they happened.

use super::{json, kind, lenient, object, to_bytes, ValueError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeMap;

/// The value of `status`: the leader's last known WAL position and its permanent slots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusValue {
    #[serde(default, deserialize_with = "lenient::uint", skip_serializing_if = "Option::is_none")]
    pub optime: Option<u64>,
    /// Slot name -> confirmed position (may be stored as a JSON string by old versions).
    #[serde(default, deserialize_with = "json_or_string", skip_serializing_if = "Option::is_none")]
    pub slots: Option<BTreeMap<String, u64>>,
    /// Members whose physical slots the leader keeps.
    #[serde(default, deserialize_with = "json_or_string", skip_serializing_if = "Option::is_none")]
    pub retain_slots: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn json_or_string<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => serde_json::from_str(&s).ok(),
        v => serde_json::from_value(v).ok(),
    })
}

impl StatusValue {
    /// A JSON object, or a bare integer (the legacy `optime/leader` form).
    pub fn parse(bytes: &[u8]) -> Result<StatusValue, ValueError> {
        match json(bytes)? {
            v @ Value::Number(_) => match lenient::uint_of(&v) {
                Some(optime) => Ok(StatusValue { optime: Some(optime), ..StatusValue::default() }),
                None => Err(ValueError::Shape { expected: "a WAL position", found: "another number" }),
            },
            v => object(v),
        }
    }
    pub fn to_json(&self) -> Vec<u8> {
        to_bytes(self)
    }
}

/// One line of `history`: a timeline switch, `[timeline, lsn, reason, timestamp, new_leader]`
/// (Patroni writes 3 to 5 elements: timestamp and new leader came later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The timeline that ended.
    pub timeline: u64,
    /// Where it ended (bytes), i.e. where the next timeline starts.
    pub lsn: u64,
    pub reason: String,
    /// ISO 8601 time of the promotion.
    pub timestamp: Option<String>,
    /// The member promoted.
    pub new_leader: Option<String>,
}

impl Serialize for HistoryEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut line = vec![Value::from(self.timeline), Value::from(self.lsn), Value::from(self.reason.clone())];
        if let Some(t) = &self.timestamp {
            line.push(Value::from(t.clone()));
            if let Some(l) = &self.new_leader {
                line.push(Value::from(l.clone()));
            }
        }
        line.serialize(s)
    }
}

impl<'de> Deserialize<'de> for HistoryEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let line = Vec::<Value>::deserialize(d)?;
        let uint = |i: usize, what: &str| {
            let v = line.get(i).ok_or_else(|| D::Error::custom(format!("history line without {what}")))?;
            lenient::uint_of(v).ok_or_else(|| D::Error::custom(format!("history {what} is not an integer: {v}")))
        };
        let string = |i: usize| {
            line.get(i).filter(|v| !v.is_null()).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        };
        Ok(HistoryEntry {
            timeline: uint(0, "timeline")?,
            lsn: uint(1, "lsn")?,
            reason: string(2).unwrap_or_default(),
            timestamp: string(3),
            new_leader: string(4),
        })
    }
}

/// The value of `history`: the cluster's timeline switches, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimelineHistory(pub Vec<HistoryEntry>);

impl TimelineHistory {
    pub fn parse(bytes: &[u8]) -> Result<TimelineHistory, ValueError> {
        match json(bytes)? {
            v @ Value::Array(_) => serde_json::from_value(v).map_err(|e| ValueError::Json(e.to_string())),
            v => Err(ValueError::Shape { expected: "a JSON array", found: kind(&v) }),
        }
    }
    pub fn to_json(&self) -> Vec<u8> {
        to_bytes(self)
    }
}
