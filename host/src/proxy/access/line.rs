//! Writing an access line: the request's fields rendered once, straight into a
//! reused buffer and out to stderr, in the shape the `tracing`
//! subscriber gives every other line (`--log-format text` or `json`); the lines
//! reach stderr in batches ([`super::sink`]).
//!
//! The generic path (`tracing::info!` with twenty fields, each recorded through the
//! subscriber's field visitors and `fmt` machinery) cost ~58,000 instructions per
//! request, more than the policy and the whole TLS record layer together; this one
//! ~5,000 (callgrind, README). It is taken once [`telemetry::init`] installed the
//! subscriber and recorded the format ([`write_directly`]); a program that installs
//! its own subscriber still gets the line through `tracing`, its fields as text in the
//! message.
//!
//! [`telemetry::init`]: crate::telemetry::init

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::OnceLock;

use super::ACCESS_TARGET;
use crate::telemetry::LogFormat;

/// The format access lines are written in directly; unset: through `tracing`.
static DIRECT: OnceLock<LogFormat> = OnceLock::new();

/// Write access lines directly to stderr in `format` (the installed subscriber's).
pub(crate) fn write_directly(format: LogFormat) {
    let _ = DIRECT.set(format);
}

/// One field's value.
pub(super) enum Value<'a> {
    /// Text: a JSON string; in text lines shown as is (quoted if it needs it).
    Str(&'a str),
    /// Text made by `Display`.
    Shown(&'a dyn std::fmt::Display),
    /// A JSON number.
    Num(u64),
}

/// What renders a line's fields, in order, to a sink.
pub(super) trait Fields {
    fn each(&self, sink: &mut dyn FnMut(&'static str, Value<'_>));
}

/// Emit one info line with `message` and `fields` on the access target, if the log
/// filter lets it through.
pub(super) fn emit(message: &'static str, fields: &dyn Fields) {
    if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return;
    }
    let Some(format) = DIRECT.get() else {
        tracing::info!(target: ACCESS_TARGET, "{message} {}", AsText(fields));
        return;
    };
    thread_local! {
        static BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
    }
    BUFFER.with(|buffer| {
        let Ok(mut line) = buffer.try_borrow_mut() else {
            return;
        };
        line.clear();
        match format {
            LogFormat::Json => json(&mut line, ACCESS_TARGET, message, fields),
            LogFormat::Text => text(&mut line, ACCESS_TARGET, message, fields),
        }
        line.push('\n');
        super::sink::write(line.as_bytes());
        if line.capacity() > 16 * 1024 {
            *line = String::new();
        }
    });
}

fn now() -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_micros(std::time::SystemTime::now())
}

/// `{"timestamp":…,"level":"INFO","message":…,<fields>,"target":…}`, as the JSON
/// subscriber writes an event with `flatten_event(true)`.
fn json(line: &mut String, target: &str, message: &str, fields: &dyn Fields) {
    let _ = write!(
        line,
        "{{\"timestamp\":\"{}\",\"level\":\"INFO\",\"message\":",
        now()
    );
    json_string(line, message);
    fields.each(&mut |key, value| {
        line.push_str(",\"");
        line.push_str(key);
        line.push_str("\":");
        match value {
            Value::Str(text) => json_string(line, text),
            Value::Shown(shown) => {
                line.push('"');
                let _ = write!(JsonEscaped(line), "{shown}");
                line.push('"');
            }
            Value::Num(n) => {
                let _ = write!(line, "{n}");
            }
        }
    });
    line.push_str(",\"target\":");
    json_string(line, target);
    line.push('}');
}

fn json_string(line: &mut String, text: &str) {
    line.push('"');
    let _ = JsonEscaped(line).write_str(text);
    line.push('"');
}

/// Appends JSON string content, escaped.
struct JsonEscaped<'a>(&'a mut String);

impl std::fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
            let (plain, tail) = rest.split_at(at);
            self.0.push_str(plain);
            let mut chars = tail.chars();
            match chars.next() {
                Some('"') => self.0.push_str("\\\""),
                Some('\\') => self.0.push_str("\\\\"),
                Some('\n') => self.0.push_str("\\n"),
                Some('\r') => self.0.push_str("\\r"),
                Some('\t') => self.0.push_str("\\t"),
                Some(c) => {
                    let _ = write!(self.0, "\\u{:04x}", u32::from(c));
                }
                None => {}
            }
            rest = chars.as_str();
        }
        self.0.push_str(rest);
        Ok(())
    }
}

/// `TIMESTAMP  INFO target: message key=value …`, as the text subscriber lays out
/// an event (no colours).
fn text(line: &mut String, target: &str, message: &str, fields: &dyn Fields) {
    let _ = write!(line, "{}  INFO {target}: {message}", now());
    text_fields(line, fields);
}

fn text_fields(line: &mut String, fields: &dyn Fields) {
    fields.each(&mut |key, value| {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        match value {
            Value::Str(text) => text_value(line, text),
            Value::Shown(shown) => {
                let start = line.len();
                let _ = write!(line, "{shown}");
                if needs_quotes(&line[start..]) {
                    let shown = line.split_off(start);
                    text_value(line, &shown);
                }
            }
            Value::Num(n) => {
                let _ = write!(line, "{n}");
            }
        }
    });
}

/// A text value: as is, or quoted and escaped (`Debug`) when it is empty or holds
/// a space, a quote, `=` or a control character.
fn text_value(line: &mut String, text: &str) {
    if needs_quotes(text) {
        let _ = write!(line, "{text:?}");
    } else {
        line.push_str(text);
    }
}

fn needs_quotes(text: &str) -> bool {
    text.is_empty()
        || text
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c.is_control())
}

/// The fields as text, for the `tracing` path.
struct AsText<'a>(&'a dyn Fields);

impl std::fmt::Display for AsText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut line = String::new();
        text_fields(&mut line, self.0);
        f.write_str(line.trim_start())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sample;

    impl Fields for Sample {
        fn each(&self, sink: &mut dyn FnMut(&'static str, Value<'_>)) {
            sink("client", Value::Shown(&"127.0.0.1:5"));
            sink("path", Value::Str("/a\"b\\c\n\u{1}é"));
            sink("rule", Value::Str("-"));
            sink("reason", Value::Str("two words"));
            sink("port", Value::Num(443));
            sink("duration_ms", Value::Shown(&format_args!("{:.3}", 1.5)));
        }
    }

    #[test]
    fn json_lines_are_the_subscriber_s_shape_and_escape_what_json_must() {
        let mut line = String::new();
        json(&mut line, "egress_proxy::access", "access", &Sample);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["message"], "access");
        assert_eq!(value["target"], "egress_proxy::access");
        assert_eq!(value["client"], "127.0.0.1:5");
        assert_eq!(value["path"], "/a\"b\\c\n\u{1}é");
        assert_eq!(value["port"], 443);
        assert_eq!(value["duration_ms"], "1.500");
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "timestamp",
                "level",
                "message",
                "client",
                "path",
                "rule",
                "reason",
                "port",
                "duration_ms",
                "target"
            ]
        );
        let timestamp = value["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(timestamp).is_ok(), "{timestamp}");
    }

    #[test]
    fn text_lines_quote_only_what_needs_it() {
        let mut line = String::new();
        text(&mut line, "egress_proxy::access", "access", &Sample);
        let (_, rest) = line
            .split_once("  INFO egress_proxy::access: access ")
            .unwrap();
        assert_eq!(
            rest,
            r#"client=127.0.0.1:5 path="/a\"b\\c\n\u{1}é" rule=- reason="two words" port=443 duration_ms=1.500"#
        );
        assert_eq!(
            AsText(&Sample).to_string(),
            r#"client=127.0.0.1:5 path="/a\"b\\c\n\u{1}é" rule=- reason="two words" port=443 duration_ms=1.500"#
        );
    }
}
