//! YAML for configuration: a `config::Format` on serde-saphyr, and a strict pre-check that turns
//! a file's unknown keys and wrong types into `file:line:col: key.path: message` diagnostics.
//!
//! Owns parsing only; layering and precedence live in the parent module.

use std::error::Error as StdError;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::Diagnostic;

/// YAML as a [`config::Format`], parsed by serde-saphyr (`serde_yaml` is deprecated).
#[derive(Debug, Clone, Copy, Default)]
pub struct YamlFormat;

impl config::Format for YamlFormat {
    fn parse(
        &self,
        uri: Option<&String>,
        text: &str,
    ) -> Result<config::Map<String, config::Value>, Box<dyn StdError + Send + Sync>> {
        let doc: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_saphyr::from_str(text)?
        };
        match doc {
            serde_json::Value::Null => Ok(config::Map::new()),
            serde_json::Value::Object(map) => Ok(map
                .into_iter()
                .map(|(k, v)| (k, to_config_value(uri, v)))
                .collect()),
            other => Err(format!(
                "the top level must be a mapping of sections, found {}",
                json_kind(&other)
            )
            .into()),
        }
    }
}

impl config::FileStoredFormat for YamlFormat {
    fn file_extensions(&self) -> &'static [&'static str] {
        &["yaml", "yml"]
    }
}

/// Converts parsed YAML (as JSON) into the `config` crate's value tree.
fn to_config_value(origin: Option<&String>, v: serde_json::Value) -> config::Value {
    use config::ValueKind;
    let kind = match v {
        serde_json::Value::Null => ValueKind::Nil,
        serde_json::Value::Bool(b) => ValueKind::Boolean(b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                ValueKind::I64(i)
            } else if let Some(u) = n.as_u64() {
                ValueKind::U64(u)
            } else {
                ValueKind::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => ValueKind::String(s),
        serde_json::Value::Array(items) => ValueKind::Array(
            items
                .into_iter()
                .map(|i| to_config_value(origin, i))
                .collect(),
        ),
        serde_json::Value::Object(map) => ValueKind::Table(
            map.into_iter()
                .map(|(k, v)| (k, to_config_value(origin, v)))
                .collect(),
        ),
    };
    config::Value::new(origin, kind)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "nothing",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

/// Deserialises `text` strictly into `T`, reporting the first problem with its position and key
/// path (`file:line:col: engine.concurrency: invalid type…`) and a did-you-mean hint for unknown
/// keys. An empty document is `T::default()`.
pub(crate) fn check_file<T: DeserializeOwned + Default>(
    file: &Path,
    text: &str,
) -> Result<T, Box<Diagnostic>> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    let mut path: Option<String> = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = Some(e.path().to_string());
            e.into_inner()
        })
    });
    result.map_err(|err| {
        // Boxed: a diagnostic is large and this is the cold path.
        let message = strip_location(&err.without_snippet().to_string());
        let path = path
            .filter(|p| p != ".")
            .map(|p| p.trim_start_matches('.').to_owned())
            .unwrap_or_default();
        let mut d = Diagnostic::file(file, message.clone())
            .path(path)
            .maybe_hint(unknown_field_hint(&message));
        if let Some(loc) = err.location() {
            d = d.at(loc.line(), loc.column());
        }
        Box::new(d)
    })
}

/// serde-saphyr appends ` at line N, column M` to messages; the diagnostic carries the position
/// itself, so the message drops it.
fn strip_location(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    if let Some(i) = first.rfind(" at line ") {
        let tail = &first[i + " at line ".len()..];
        let is_position = tail.split_once(", column ").is_some_and(|(l, c)| {
            !l.is_empty()
                && !c.is_empty()
                && l.bytes().all(|b| b.is_ascii_digit())
                && c.bytes().all(|b| b.is_ascii_digit())
        });
        if is_position {
            return first[..i].to_owned();
        }
    }
    first.to_owned()
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" messages (with or without backticks
/// around the expected names): `did you mean `a`?`, or the valid keys when nothing is close.
pub(crate) fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (given, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected ").map_or("", |(_, e)| e);
    let expected = expected.strip_prefix("one of ").unwrap_or(expected);
    // The `config` crate appends ` for key `section``.
    let expected = expected.split(" for key ").next().unwrap_or_default();
    let names: Vec<&str> = expected
        .split(", ")
        .flat_map(|part| part.split(" or "))
        .map(|n| n.trim().trim_matches('`'))
        .filter(|n| !n.is_empty() && !n.contains(' '))
        .collect();
    if let Some(m) = crate::error::did_you_mean(given, names.iter().copied()) {
        return Some(format!("did you mean `{m}`?"));
    }
    if names.is_empty() {
        None
    } else {
        Some(format!("expected one of {}", names.join(", ")))
    }
}

/// Drops the `for key …` suffix the `config` crate adds; diagnostics carry the path.
pub(crate) fn strip_key_suffix(message: &str) -> &str {
    message
        .rfind(" for key `")
        .filter(|_| message.ends_with('`'))
        .map_or(message, |i| &message[..i])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use config::Format as _;

    #[test]
    fn hint_suggests_the_closest_field() {
        let msg = "unknown field `engne`, expected one of `store`, `engine`, `log`";
        assert_eq!(
            unknown_field_hint(msg).as_deref(),
            Some("did you mean `engine`?")
        );
        let msg = "unknown field `zzz`, expected `url`";
        assert_eq!(
            unknown_field_hint(msg).as_deref(),
            Some("expected one of url")
        );
        let msg = "unknown field `formt`, expected `format` or `level` for key `log`";
        assert_eq!(
            unknown_field_hint(msg).as_deref(),
            Some("did you mean `format`?")
        );
        let msg = "unknown field `engnie`, expected one of store, engine, log";
        assert_eq!(
            unknown_field_hint(msg).as_deref(),
            Some("did you mean `engine`?")
        );
        assert_eq!(unknown_field_hint("invalid type"), None);
        assert_eq!(
            strip_key_suffix(
                "invalid type: string \"x\", expected u32 for key `engine.concurrency`"
            ),
            "invalid type: string \"x\", expected u32"
        );
    }

    #[test]
    fn location_suffix_is_dropped() {
        assert_eq!(
            strip_location("unknown field `x` at line 3, column 5"),
            "unknown field `x`"
        );
        assert_eq!(strip_location("plain"), "plain");
    }

    #[test]
    fn format_parses_nested_mappings() {
        let map = YamlFormat
            .parse(None, "engine:\n  dry_run: true\n  concurrency: 4\n")
            .unwrap();
        let engine = map["engine"].clone().into_table().unwrap();
        assert!(engine["dry_run"].clone().into_bool().unwrap());
        assert_eq!(engine["concurrency"].clone().into_int().unwrap(), 4);
        assert!(YamlFormat.parse(None, "").unwrap().is_empty());
        assert!(YamlFormat.parse(None, "- a\n").is_err());
    }
}
