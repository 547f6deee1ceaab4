//! A validator for the subset of JSON Schema that `docs/report.schema.json` uses: `type`
//! (single or list, `integer` included), `const`, `enum`, `required`, `properties`,
//! `additionalProperties` (false or a schema), `items` and local `$ref`s. Any other keyword in
//! the schema is an error, so the schema cannot silently use something this does not check.

use serde_json::Value;

const KNOWN: [&str; 13] = [
    "$schema",
    "description",
    "$id",
    "title",
    "type",
    "const",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "$ref",
    "$defs",
];

/// Every violation of `schema` by `value`, as `path: what`.
pub(crate) fn validate(root: &Value, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        errors.push(format!("{path}: schema is not an object"));
        return;
    };
    for k in s.keys() {
        if !KNOWN.contains(&k.as_str()) {
            errors.push(format!("{path}: schema keyword `{k}` is not supported by this validator"));
        }
    }
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let target = r.strip_prefix("#/").and_then(|p| p.split('/').try_fold(root, |v, k| v.get(k)));
        match target {
            Some(t) => validate(root, t, value, path, errors),
            None => errors.push(format!("{path}: unresolved $ref {r}")),
        }
        return;
    }
    if let Some(c) = s.get("const")
        && c != value
    {
        errors.push(format!("{path}: expected {c}, got {value}"));
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {e:?}"));
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.is_u64() || value.is_i64(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
        if !ok {
            errors.push(format!("{path}: {value} is not of type {types:?}"));
        }
    }
    if let Some(obj) = value.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !obj.contains_key(r) {
                errors.push(format!("{path}: missing `{r}`"));
            }
        }
        for (k, v) in obj {
            let sub = format!("{path}.{k}");
            match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                (Some(ps), _) => validate(root, ps, v, &sub, errors),
                (None, Some(Value::Bool(false))) => errors.push(format!("{sub}: not in the schema")),
                (None, Some(extra @ Value::Object(_))) => validate(root, extra, v, &sub, errors),
                (None, _) => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            validate(root, items, v, &format!("{path}[{i}]"), errors);
        }
    }
}
