//! Values across the boundary: Monty objects to JSON (tool arguments) and back (results).
//!
//! JSON maps onto Python the way `json.loads` does (object → dict, array → list, integers
//! stay integers). The other way, a value JSON cannot express (a set, bytes, a date) is
//! sent as its `repr`, exactly as the CPython guests' `json.dumps(..., default=repr)` does.

use monty_types::{DictPairs, MontyObject};
use num_bigint::BigInt;
use serde_json::{Map, Number, Value};

/// A Monty value as JSON.
pub fn to_json(obj: &MontyObject) -> Value {
    match obj {
        MontyObject::None => Value::Null,
        MontyObject::Bool(b) => Value::Bool(*b),
        MontyObject::Int(i) => Value::from(*i),
        MontyObject::BigInt(b) => b
            .to_string()
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(b.to_string())),
        MontyObject::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        MontyObject::String(s) => Value::String(s.clone()),
        MontyObject::List(items) | MontyObject::Tuple(items) => {
            Value::Array(items.iter().map(to_json).collect())
        }
        MontyObject::Dict(pairs) => {
            let mut map = Map::new();
            for (k, v) in pairs {
                let key = match k {
                    MontyObject::String(s) => s.clone(),
                    other => json_key(other),
                };
                map.insert(key, to_json(v));
            }
            Value::Object(map)
        }
        other => Value::String(other.py_repr()),
    }
}

/// A non-string dict key as `json.dumps` writes it (`1` → `"1"`, `True` → `"true"`).
fn json_key(k: &MontyObject) -> String {
    match to_json(k) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// JSON as a Monty value.
pub fn from_json(v: &Value) -> MontyObject {
    match v {
        Value::Null => MontyObject::None,
        Value::Bool(b) => MontyObject::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                MontyObject::Int(i)
            } else if let Some(u) = n.as_u64() {
                MontyObject::BigInt(BigInt::from(u))
            } else {
                MontyObject::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => MontyObject::String(s.clone()),
        Value::Array(items) => MontyObject::List(items.iter().map(from_json).collect()),
        Value::Object(map) => MontyObject::Dict(DictPairs::from(
            map.iter()
                .map(|(k, v)| (MontyObject::String(k.clone()), from_json(v)))
                .collect::<Vec<_>>(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_monty_values() {
        let v = json!({"a": [1, 2.5, "x", null, true], "big": 18446744073709551615u64, "o": {}});
        assert_eq!(to_json(&from_json(&v)), v);
    }

    #[test]
    fn values_json_lacks_become_their_repr() {
        let set = MontyObject::Set(vec![MontyObject::Int(1)]);
        assert_eq!(to_json(&set), json!("{1}"));
        let tuple = MontyObject::Tuple(vec![MontyObject::Int(1), MontyObject::Bool(false)]);
        assert_eq!(to_json(&tuple), json!([1, false]));
        let dict = MontyObject::Dict(DictPairs::from(vec![(
            MontyObject::Int(3),
            MontyObject::None,
        )]));
        assert_eq!(to_json(&dict), json!({"3": null}));
    }
}
