//! `apiVersion: v1, kind: List` documents, what `kubectl get -o yaml` prints:
//! each of `items` is a document of its own, with the lines of its own fields
//! (so a diagnostic points at the item, not at the List).
use super::yaml::{Node, Value};

/// The items of `node` if it is a List: `None` when it is not one, `Err` when
/// its `items` is not a sequence.
pub fn items(node: &Node) -> Option<Result<&[Node], String>> {
    let text = |key: &str| node.get(key).and_then(Node::as_str);
    if text("apiVersion") != Some("v1") || text("kind") != Some("List") {
        return None;
    }
    Some(match node.get("items").map(|n| &n.value) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Seq(items)) => Ok(items),
        Some(_) => Err("`items` of a List must be a sequence of documents".into()),
    })
}

/// The items of a List ([`items`] said it is one, with a sequence of items),
/// taken out of it.
pub fn into_items(node: Node) -> Vec<Node> {
    let Value::Map(entries) = node.value else {
        return Vec::new();
    };
    entries
        .into_iter()
        .find(|(k, _, _)| k == "items")
        .and_then(|(_, _, n)| match n.value {
            Value::Seq(items) => Some(items),
            _ => None,
        })
        .unwrap_or_default()
}
