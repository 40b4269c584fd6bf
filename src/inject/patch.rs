//! Building the RFC 6902 JSONPatch the webhook answers with.
//!
//! JSON Patch cannot add to a list that does not exist, and `-` appends while `0` inserts first,
//! so every helper here is told whether its target exists. Paths are built from unescaped tokens
//! (RFC 6901 escaping of `/` and `~` is left to `jsonptr`), so an annotation key such as
//! `portcullis.dev/status` is addressed correctly.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use serde_json::Value;

/// The pointer to `tokens`, e.g. `["metadata", "annotations", "portcullis.dev/status"]`.
pub fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

/// `add` at `tokens`.
pub fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

/// `replace` at `tokens`.
pub fn replace(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation {
        path: pointer(tokens),
        value,
    })
}

/// Appends `values` to the list at `list`, creating it when it does not exist yet.
pub fn append(ops: &mut Vec<PatchOperation>, list: &[&str], exists: bool, values: Vec<Value>) {
    if values.is_empty() {
        return;
    }
    if !exists {
        ops.push(add(list, Value::Array(values)));
        return;
    }
    let mut end = list.to_vec();
    end.push("-");
    for value in values {
        ops.push(add(&end, value));
    }
}

/// Inserts `value` as the first element of the list at `list`, creating it when needed.
pub fn prepend(ops: &mut Vec<PatchOperation>, list: &[&str], exists: bool, value: Value) {
    if !exists {
        ops.push(add(list, Value::Array(vec![value])));
        return;
    }
    let mut first = list.to_vec();
    first.push("0");
    ops.push(add(&first, value));
}

/// Sets one annotation, creating `metadata.annotations` when the pod has none.
pub fn set_annotation(
    ops: &mut Vec<PatchOperation>,
    has_annotations: bool,
    key: &str,
    value: &str,
) {
    if !has_annotations {
        let map = serde_json::Map::from_iter([(key.to_string(), Value::from(value))]);
        ops.push(add(&["metadata", "annotations"], Value::Object(map)));
        return;
    }
    ops.push(add(&["metadata", "annotations", key], Value::from(value)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_keys_are_escaped() {
        let mut ops = Vec::new();
        set_annotation(&mut ops, true, "portcullis.dev/status", "injected");
        let json = serde_json::to_value(&ops).unwrap_or_default();
        assert_eq!(
            json[0]["path"],
            "/metadata/annotations/portcullis.dev~1status"
        );
    }

    #[test]
    fn missing_list_is_created_whole() {
        let mut ops = Vec::new();
        append(
            &mut ops,
            &["spec", "volumes"],
            false,
            vec![Value::from(1), Value::from(2)],
        );
        let json = serde_json::to_value(&ops).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!([{"op": "add", "path": "/spec/volumes", "value": [1, 2]}])
        );
    }
}
