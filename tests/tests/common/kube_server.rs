//! A small stand-in for a current kube-apiserver: it answers API discovery
//! (`/api`, `/apis`, `/apis/GROUP/VERSION`) and list requests with recorded
//! objects (k8s-openapi's v1.33 types, serialized as a v1.33 server sends
//! them), and holds watch requests open without events. For the paths of the
//! agent's Kubernetes client that differ between the real v1.20 server the
//! e2e tests run and a current release (EndpointSlice discovery.k8s.io/v1).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

/// A served resource: group ("" for core), version, plural, kind, namespaced.
pub type Resource = (&'static str, &'static str, &'static str, &'static str, bool);

/// What a current server serves that the agent reads.
pub const CURRENT: &[Resource] = &[
    ("", "v1", "namespaces", "Namespace", false),
    ("", "v1", "pods", "Pod", true),
    ("", "v1", "serviceaccounts", "ServiceAccount", true),
    ("", "v1", "services", "Service", true),
    ("", "v1", "endpoints", "Endpoints", true),
    (
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
    ),
];

struct Served {
    resources: Vec<Resource>,
    objects: Vec<Value>,
}

/// The running server and a kubeconfig that points at it.
pub struct RecordedApi {
    pub kubeconfig: PathBuf,
}

impl RecordedApi {
    /// Serves `objects` (each with apiVersion and kind) as `resources` on
    /// 127.0.0.1, on `rt`; the kubeconfig is written into `dir`.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        dir: &Path,
        resources: &[Resource],
        objects: Vec<Value>,
    ) -> RecordedApi {
        let served = Arc::new(Served {
            resources: resources.to_vec(),
            objects,
        });
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(answer).with_state(served);
        rt.spawn(async move { axum::serve(listener, app).await });
        std::fs::create_dir_all(dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://{addr}\"}}\n\
                 users:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\n\
                 current-context: x\n"
            ),
        )
        .unwrap();
        RecordedApi { kubeconfig }
    }
}

fn json_response(v: Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

async fn answer(State(s): State<Arc<Served>>, req: Request) -> Response {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().unwrap_or("");
    let watch = query
        .split('&')
        .any(|q| q == "watch=true" || q == "watch=1");
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // (group, version, the rest)
    let (group, version, rest) = match parts.as_slice() {
        ["api"] => {
            return json_response(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            )
        }
        ["apis"] => {
            let mut groups: Vec<(&str, &str)> = s
                .resources
                .iter()
                .filter(|r| !r.0.is_empty())
                .map(|r| (r.0, r.1))
                .collect();
            groups.dedup();
            let groups: Vec<Value> = groups
                .iter()
                .map(|(g, v)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv], "preferredVersion": gv})
                })
                .collect();
            return json_response(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            );
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return (axum::http::StatusCode::NOT_FOUND, "").into_response(),
    };
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let served: Vec<&Resource> = s
        .resources
        .iter()
        .filter(|r| r.0 == group && r.1 == version)
        .collect();
    if served.is_empty() {
        return (axum::http::StatusCode::NOT_FOUND, "").into_response();
    }
    // `namespaces/NS/PLURAL` or `PLURAL`.
    let plural = match rest {
        [] => {
            let list: Vec<Value> = served
                .iter()
                .map(|r| {
                    json!({"name": r.2, "singularName": "", "namespaced": r.4, "kind": r.3,
                               "verbs": ["get", "list", "watch"]})
                })
                .collect();
            return json_response(json!({"kind": "APIResourceList", "apiVersion": "v1",
                                        "groupVersion": gv, "resources": list}));
        }
        [plural] | ["namespaces", _, plural] => *plural,
        _ => return (axum::http::StatusCode::NOT_FOUND, "").into_response(),
    };
    let Some(r) = served.iter().find(|r| r.2 == plural) else {
        return (axum::http::StatusCode::NOT_FOUND, "").into_response();
    };
    if watch {
        // No events: the connection stays open until the client goes.
        return Body::from_stream(futures::stream::pending::<Result<String, std::io::Error>>())
            .into_response();
    }
    let items: Vec<&Value> = s
        .objects
        .iter()
        .filter(|o| o["apiVersion"] == gv.as_str() && o["kind"] == r.3)
        .collect();
    json_response(json!({"apiVersion": gv, "kind": format!("{}List", r.3),
                         "metadata": {"resourceVersion": "1"}, "items": items}))
}
