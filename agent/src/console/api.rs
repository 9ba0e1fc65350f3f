//! The console's JSON API (see the module docs of [`super`]): query strings
//! parsed into the queries of `agent flows` and `agent staged report`,
//! answers as JSON.
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{BadQuery, ConsoleData};
use crate::flows::report::{PolicyReport, ReportQuery, Window};
use crate::flows::{FlowFilter, FlowQuery};

/// Records a flows query returns when it names neither `last` nor `since_ms`.
pub const DEFAULT_LAST: usize = 500;

pub async fn nodes<D: ConsoleData>(State(data): State<Arc<D>>) -> Response {
    #[derive(Serialize)]
    struct Nodes {
        nodes: Vec<String>,
    }
    answer(data.nodes().await.map(|nodes| Nodes { nodes }))
}

pub async fn flows<D: ConsoleData>(
    State(data): State<Arc<D>>,
    RawQuery(query): RawQuery,
) -> Response {
    #[derive(Serialize)]
    struct Flows {
        flows: Vec<crate::flows::Flow>,
    }
    let query = match flow_query(&params(query.as_deref())) {
        Ok(q) => q,
        Err(e) => return answer::<()>(Err(BadQuery(e).into())),
    };
    answer(data.flows(query).await.map(|flows| Flows { flows }))
}

/// The report, each policy with the command that promotes it.
#[derive(Serialize)]
struct Report {
    window: Window,
    policies: Vec<PolicyWithCommand>,
}

#[derive(Serialize)]
struct PolicyWithCommand {
    #[serde(flatten)]
    report: PolicyReport,
    /// `agent promote --datastore ... KIND/NAME [-n NAMESPACE]`.
    promote: String,
}

pub async fn report<D: ConsoleData>(
    State(data): State<Arc<D>>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = params(query.as_deref());
    let query = match report_query(&params) {
        Ok(q) => q,
        Err(e) => return answer::<()>(Err(BadQuery(e).into())),
    };
    let datastore = data.promote_datastore();
    let report = data.staged_report(query).await.map(|r| Report {
        window: r.window,
        policies: r
            .policies
            .into_iter()
            .map(|report| PolicyWithCommand {
                promote: promote_command(&datastore, &report.policy),
                report,
            })
            .collect(),
    });
    answer(report)
}

pub async fn matrix<D: ConsoleData>(State(data): State<Arc<D>>) -> Response {
    answer(data.matrix().await)
}

/// 200 with the JSON, 400 for a [`BadQuery`], 500 for anything else.
fn answer<T: Serialize>(result: anyhow::Result<T>) -> Response {
    let (status, body) = match result {
        Ok(v) => (StatusCode::OK, serde_json::to_string(&v)),
        Err(e) => {
            let status = if e.downcast_ref::<BadQuery>().is_some() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            let error = serde_json::json!({ "error": format!("{e:#}") });
            (status, serde_json::to_string(&error))
        }
    };
    match body {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

type Params = Vec<(String, String)>;

/// The query string's pairs, empty values left out (an empty filter field).
fn params(query: Option<&str>) -> Params {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

fn get<'a>(params: &'a Params, key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn number<T: std::str::FromStr>(params: &Params, key: &str) -> Result<Option<T>, String> {
    get(params, key)
        .map(|v| {
            v.parse()
                .map_err(|_| format!("{key}={v:?}: expected a number"))
        })
        .transpose()
}

fn flag(params: &Params, key: &str) -> Result<bool, String> {
    match get(params, key) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1" | "on") => Ok(true),
        Some(v) => Err(format!("{key}={v:?}: expected true or false")),
    }
}

/// `staged=a,b` (or repeated `staged=`), as `--staged` takes them.
fn staged(params: &Params) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| k == "staged")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn flow_query(params: &Params) -> Result<FlowQuery, String> {
    let verdict = match get(params, "verdict") {
        None => None,
        Some(v @ ("allow" | "deny")) => Some(v.to_string()),
        Some(v) => return Err(format!("verdict={v:?}: expected allow or deny")),
    };
    let since_ms = number(params, "since_ms")?;
    let last = number(params, "last")?;
    let owned = |key| get(params, key).map(String::from);
    Ok(FlowQuery {
        follow: false,
        last: last.or(since_ms.is_none().then_some(DEFAULT_LAST)),
        since_ms,
        filter: FlowFilter {
            verdict,
            pending_diff: flag(params, "pending_diff")?,
            staged: staged(params),
            policy: owned("policy"),
            from: owned("from"),
            to: owned("to"),
            port: number(params, "port")?,
            protocol: owned("protocol"),
        },
    })
}

fn report_query(params: &Params) -> Result<ReportQuery, String> {
    Ok(ReportQuery {
        staged: staged(params),
        since_ms: number(params, "since_ms")?,
    })
}

/// `agent promote --datastore DATASTORE KIND/NAME [-n NAMESPACE]` for a
/// report's `sgnp/name` or `snp/namespace/name`, as the CLI spells it.
pub fn promote_command(datastore: &str, policy: &str) -> String {
    let Ok(id) = crate::cli::staged::parse(policy) else {
        return format!(
            "agent promote --datastore {} {policy}",
            shell_word(datastore)
        );
    };
    let mut command = format!(
        "agent promote --datastore {} {}/{}",
        shell_word(datastore),
        id.kind.code(),
        shell_word(&id.name)
    );
    if let Some(ns) = &id.namespace {
        command += &format!(" -n {}", shell_word(ns));
    }
    command
}

/// `word` as one shell word: as is when it is plain, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=+,@".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promote_commands_are_spelled_as_the_cli_takes_them() {
        assert_eq!(
            promote_command("/etc/agent/policies", "sgnp/backend-lockdown"),
            "agent promote --datastore /etc/agent/policies sgnp/backend-lockdown"
        );
        assert_eq!(
            promote_command("kubernetes", "snp/shop/api-allow"),
            "agent promote --datastore kubernetes snp/api-allow -n shop"
        );
        assert_eq!(
            promote_command("/tmp/my policies", "sknp/shop/x"),
            "agent promote --datastore '/tmp/my policies' sknp/x -n shop"
        );
    }

    #[test]
    fn flow_queries_parse_the_filters_and_refuse_bad_values() {
        let q = flow_query(&params(Some(
            "verdict=deny&pending_diff=true&staged=sgnp/a,+sgnp/b&from=prod/frontend&to=&port=8080",
        )))
        .unwrap();
        assert_eq!(q.last, Some(DEFAULT_LAST));
        assert_eq!(q.filter.verdict.as_deref(), Some("deny"));
        assert!(q.filter.pending_diff);
        assert_eq!(q.filter.staged, ["sgnp/a", "sgnp/b"]);
        assert_eq!(q.filter.from.as_deref(), Some("prod/frontend"));
        assert_eq!(q.filter.to, None);
        assert_eq!(q.filter.port, Some(8080));
        let q = flow_query(&params(Some("since_ms=60000"))).unwrap();
        assert_eq!((q.last, q.since_ms), (None, Some(60000)));
        for bad in ["verdict=maybe", "port=http", "pending_diff=yes", "last=-1"] {
            let err = flow_query(&params(Some(bad))).unwrap_err();
            assert!(err.contains(bad.split('=').next().unwrap()), "{err}");
        }
    }
}
