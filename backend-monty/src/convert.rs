//! Values across the boundary: Monty objects to JSON (tool arguments) and back (results).
//!
//! JSON maps onto Python the way `json.loads` does (object → dict, array → list, integers
//! stay integers). The other way, a value JSON cannot express (a set, bytes, a date) is
//! sent as its `repr`, exactly as the CPython guests' `json.dumps(..., default=repr)` does.

use agentkernel_core::ExprValue;
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

/// The value of a program's last expression as a guest reports it (the same report as the
/// CPython guests' `describe_value` in kernel-core's `program.py`): its repr, cut at
/// [`ExprValue::MAX_REPR_BYTES`], and its JSON text where it is plain JSON. The host takes
/// it through [`ExprValue::from_guest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueReport {
    /// `repr(value)`, at most [`ExprValue::MAX_REPR_BYTES`].
    pub repr: String,
    /// The value's JSON text, where [`plain_json`] takes it and it fits
    /// [`ExprValue::MAX_JSON_BYTES`].
    pub json: Option<String>,
    /// Whether `repr` was cut.
    pub truncated: bool,
}

/// The report of `value`, the value of a program's last expression; `None` for Python's
/// `None` (no value, as Jupyter shows none).
pub fn describe(value: &MontyObject) -> Option<ValueReport> {
    if matches!(value, MontyObject::None) {
        return None;
    }
    let mut repr = String::new();
    repr_into(value, &mut repr, ExprValue::MAX_REPR_BYTES);
    let truncated = repr.len() > ExprValue::MAX_REPR_BYTES;
    if truncated {
        let mut end = ExprValue::MAX_REPR_BYTES;
        while !repr.is_char_boundary(end) {
            end -= 1;
        }
        repr.truncate(end);
    }
    let json = plain_json(value, 0)
        .map(|v| v.to_string())
        .filter(|text| text.len() <= ExprValue::MAX_JSON_BYTES);
    Some(ValueReport {
        repr,
        json,
        truncated,
    })
}

/// Appends CPython's `repr(obj)` to `out`, stopping soon after `out` passes `limit` bytes
/// (so a huge value costs no more than its first `limit` bytes). Containers are written
/// here, because [`MontyObject::py_repr`] writes a one-item tuple without its comma
/// (`('c')` for `('c',)`); everything else is `py_repr`'s.
fn repr_into(obj: &MontyObject, out: &mut String, limit: usize) {
    let items = |out: &mut String, items: &[MontyObject], open: &str, close: &str| {
        out.push_str(open);
        for (i, item) in items.iter().enumerate() {
            if out.len() > limit {
                return;
            }
            if i > 0 {
                out.push_str(", ");
            }
            repr_into(item, out, limit);
        }
        out.push_str(close);
    };
    match obj {
        MontyObject::List(l) => items(out, l, "[", "]"),
        MontyObject::Tuple(t) if t.len() == 1 => items(out, t, "(", ",)"),
        MontyObject::Tuple(t) => items(out, t, "(", ")"),
        MontyObject::Set(s) if !s.is_empty() => items(out, s, "{", "}"),
        MontyObject::FrozenSet(s) if !s.is_empty() => items(out, s, "frozenset({", "})"),
        MontyObject::Dict(pairs) => {
            out.push('{');
            for (i, (k, v)) in pairs.into_iter().enumerate() {
                if out.len() > limit {
                    return;
                }
                if i > 0 {
                    out.push_str(", ");
                }
                repr_into(k, out, limit);
                out.push_str(": ");
                repr_into(v, out, limit);
            }
            out.push('}');
        }
        other => out.push_str(&other.py_repr()),
    }
}

/// `obj` as JSON where `json.dumps(obj, allow_nan=False)` takes it and JSON readers keep it
/// exactly (the CPython guests' rule): dicts (with str, int, float, bool or None keys),
/// lists, tuples, str, int within 64 bits, finite float, bool and None, nested at most 100
/// deep. Anything else (a set, bytes, a date, an object) is `None`, unlike [`to_json`],
/// which turns it into its repr.
pub fn plain_json(obj: &MontyObject, depth: usize) -> Option<Value> {
    if depth > 100 {
        return None;
    }
    Some(match obj {
        MontyObject::None => Value::Null,
        MontyObject::Bool(b) => Value::Bool(*b),
        MontyObject::Int(i) => Value::from(*i),
        MontyObject::BigInt(b) => match i64::try_from(b) {
            Ok(i) => Value::from(i),
            Err(_) => Value::from(u64::try_from(b).ok()?),
        },
        MontyObject::Float(f) => Value::Number(Number::from_f64(*f)?),
        MontyObject::String(s) => Value::String(s.clone()),
        MontyObject::List(items)
        | MontyObject::Tuple(items)
        | MontyObject::NamedTuple { values: items, .. } => Value::Array(
            items
                .iter()
                .map(|x| plain_json(x, depth + 1))
                .collect::<Option<_>>()?,
        ),
        MontyObject::Dict(pairs) => {
            let mut map = Map::new();
            for (k, v) in pairs {
                let key = match k {
                    MontyObject::String(s) => s.clone(),
                    MontyObject::None
                    | MontyObject::Bool(_)
                    | MontyObject::Int(_)
                    | MontyObject::BigInt(_)
                    | MontyObject::Float(_) => json_key(k),
                    _ => return None,
                };
                map.insert(key, plain_json(v, depth + 1)?);
            }
            Value::Object(map)
        }
        _ => return None,
    })
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

    #[test]
    fn last_values_are_described_as_the_cpython_guests_do() {
        assert_eq!(describe(&MontyObject::None), None);
        let d = describe(&MontyObject::Dict(DictPairs::from(vec![(
            MontyObject::Int(1),
            MontyObject::Tuple(vec![MontyObject::String("a".into())]),
        )])))
        .unwrap();
        assert_eq!(d.repr, "{1: ('a',)}");
        let nested = MontyObject::List(vec![
            MontyObject::Tuple(vec![]),
            MontyObject::Set(vec![]),
            MontyObject::FrozenSet(vec![MontyObject::Int(2)]),
        ]);
        assert_eq!(
            describe(&nested).unwrap().repr,
            "[(), set(), frozenset({2})]"
        );
        let huge = MontyObject::List(vec![MontyObject::Int(12345); 1_000_000]);
        let cut = describe(&huge).unwrap();
        assert!(cut.truncated && cut.repr.len() == ExprValue::MAX_REPR_BYTES);
        assert_eq!(d.json.as_deref(), Some(r#"{"1":["a"]}"#));
        let set = describe(&MontyObject::Set(vec![MontyObject::Int(1)])).unwrap();
        assert_eq!((set.repr.as_str(), set.json), ("{1}", None));
        let big = BigInt::from(u64::MAX) * 2;
        assert_eq!(describe(&MontyObject::BigInt(big)).unwrap().json, None);
        assert_eq!(describe(&MontyObject::Float(f64::NAN)).unwrap().json, None);
        let long = describe(&MontyObject::String("é".repeat(ExprValue::MAX_REPR_BYTES))).unwrap();
        assert!(long.truncated);
        assert!(long.repr.len() <= ExprValue::MAX_REPR_BYTES);
        assert_eq!(long.json, None);
    }
}
