//! The bodies a webhook receives. `json`: one Standard Webhooks object, `type`
//! (`pgwarden.<filter>`), `timestamp` (RFC 3339, when the event happened) and `data` (the
//! summary line, the count, rule and session, and the whole event as the event stream has
//! it). `slack`: an incoming-webhook message, `text` for notifications and `blocks` for a
//! readable card.

use serde_json::{json, Value};

use super::alert::Alert;
use super::settings::Format;

/// The body of `alert` in `format`.
pub fn body(format: Format, alert: &Alert) -> Vec<u8> {
    let v = match format {
        Format::Json => standard(alert),
        Format::Slack => slack(alert),
    };
    serde_json::to_vec(&v).expect("JSON values serialize")
}

/// The Standard Webhooks `type` of an alert.
pub fn event_type(alert: &Alert) -> String {
    format!("pgwarden.{}", alert.filter.name())
}

fn standard(alert: &Alert) -> Value {
    json!({
        "type": event_type(alert),
        "timestamp": alert.event.at.to_string(),
        "data": {
            "summary": alert.summary,
            "count": alert.count,
            "repeat": alert.repeat,
            "rule": alert.rule,
            "session": alert.session,
            "event": &*alert.event,
        },
    })
}

fn slack(alert: &Alert) -> Value {
    let title = alert.filter.name().replace('_', " ");
    let text = escape(&format!("pgwarden {title}: {}", alert.summary));
    let mut context = format!("event {} · {}", alert.event.seq, alert.event.at);
    if alert.repeat {
        context.push_str(&format!(" · {} repeats collapsed", alert.count));
    }
    json!({
        "text": text,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": format!("*pgwarden: {}*\n{}", escape(&title), escape(&alert.summary)),
                },
            },
            {
                "type": "context",
                "elements": [{ "type": "mrkdwn", "text": escape(&context) }],
            },
        ],
    })
}

/// Slack's three control characters, in `text` and in mrkdwn blocks alike.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::super::alert::alert_for;
    use super::super::alert::tests::{emitted, refusal};
    use super::*;

    #[test]
    fn json_is_a_standard_webhooks_object_with_the_event_inside() {
        let a = alert_for(&emitted(3, refusal(7, "destructive.drop-table"))).unwrap();
        let v: Value = serde_json::from_slice(&body(Format::Json, &a)).unwrap();
        assert_eq!(v["type"], "pgwarden.refused");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["data"]["count"], 1);
        assert_eq!(v["data"]["repeat"], false);
        assert_eq!(v["data"]["rule"], "destructive.drop-table");
        assert_eq!(v["data"]["session"], 7);
        assert_eq!(v["data"]["event"]["type"], "decision");
        assert_eq!(v["data"]["event"]["seq"], 3);
        assert_eq!(v["data"]["event"]["refused"], true);
        assert!(v["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("destructive.drop-table"));
    }

    #[test]
    fn slack_has_text_and_blocks_with_escaped_mrkdwn() {
        let mut a = alert_for(&emitted(3, refusal(7, "a<b>&c"))).unwrap();
        a.repeat = true;
        a.count = 4;
        let v: Value = serde_json::from_slice(&body(Format::Slack, &a)).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.starts_with("pgwarden refused: "), "{text}");
        assert!(text.contains("a&lt;b&gt;&amp;c"), "{text}");
        let section = v["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(section.starts_with("*pgwarden: refused*\n"), "{section}");
        assert!(section.contains("a&lt;b&gt;&amp;c"), "{section}");
        let context = v["blocks"][1]["elements"][0]["text"].as_str().unwrap();
        assert!(context.contains("4 repeats collapsed"), "{context}");
    }
}
