//! The Unix socket (JSON lines, see [`super::protocol`]).
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;

use super::protocol::{ErrorReply, Request};
use super::{lock, status, Shared};
use crate::flows::blame::{Blame, Judge};
use crate::flows::promotion::{PromotionEvent, PromotionLine};
use crate::flows::report::{self, History, ReportQuery, StagedReport};
use crate::flows::{unix_now_ns, Flow, FlowFilter, FlowQuery, Matcher, View};

/// Binds the socket: parent directory created (0700), a stale socket removed,
/// refuses to start when another agent answers on it; mode 0600. Only ever
/// removes a socket: a regular file, directory or symlink at `path` is refused.
pub(super) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
        Ok(m) if !m.file_type().is_socket() => {
            let what = if m.is_dir() {
                "a directory"
            } else if m.file_type().is_symlink() {
                "a symlink"
            } else if m.is_file() {
                "a regular file"
            } else {
                "not a socket"
            };
            anyhow::bail!(
                "{} is {what}, not a socket: refusing to replace it (pass another --socket, \
                 or remove it yourself if it is not needed)",
                path.display()
            );
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "another agent is serving {} (stop it, or pass --socket)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
    }
    // SAFETY: umask is process-wide and only narrowed around bind.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub(super) async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = client(stream, shared).await {
                        tracing::debug!(error = %e, "client");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn write_line<T: serde::Serialize>(
    w: &mut (impl AsyncWriteExt + Unpin),
    v: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn client(stream: UnixStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r.take(64 * 1024));
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line)).await {
        Ok(res) => res?,
        Err(_) => return Ok(()),
    };
    let req: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            return write_line(
                &mut w,
                &ErrorReply {
                    error: format!("bad request: {e}"),
                },
            )
            .await;
        }
    };
    match req {
        Request::Status => {
            let s = status(&shared);
            write_line(&mut w, &s).await?;
        }
        Request::Flows(q) => flows(q, &shared, &mut w, r).await?,
        Request::StagedReport(q) => match staged_report(q, &shared).await {
            Ok(report) => write_line(&mut w, &report).await?,
            Err(error) => write_line(&mut w, &ErrorReply { error }).await?,
        },
    }
    w.shutdown().await
}

/// Judges the recorded connections per staged policy with the evaluator, on
/// a blocking thread (the model is cloned: the event loop is not held up).
/// With a history on disk, its records are read back too: the window then
/// reaches back past restarts and past the in-memory bound.
pub(super) async fn staged_report(
    q: ReportQuery,
    shared: &Arc<Shared>,
) -> Result<StagedReport, String> {
    let model = lock(&shared.inner).enforced.good.model.clone();
    let (memory, dropped_until_ns) = {
        let table = lock(&shared.flows);
        (table.history(), table.dropped_until_ns)
    };
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut notes = vec![recorded_note(shared.flows_all)];
        let (records, complete_from_ns) = match &shared.history {
            None => (memory, shared.started_ns.max(dropped_until_ns)),
            Some(h) => {
                let disk = crate::flows::history::load_newest(
                    &h.dir,
                    crate::flows::history::REPORT_RECORDS,
                );
                notes.extend(disk.notes);
                let from = disk.complete_from_ns.unwrap_or(shared.started_ns);
                // Both: the newest second may not be on disk yet. A record
                // in both counts once (connections are merged by 5-tuple).
                let mut all: Vec<Arc<Flow>> =
                    disk.records.into_iter().map(|(_, f)| Arc::new(f)).collect();
                all.extend(memory);
                (all, from)
            }
        };
        let history = History {
            records: &records,
            complete_from_ns,
            now_ns: unix_now_ns(),
            notes,
        };
        report::live(&model, &q, &history)
    })
    .await
    .map_err(|e| format!("the report failed: {e}"))?
}

/// What the agent records, for the report's window.
fn recorded_note(all: bool) -> String {
    if all {
        "connections this node's agent recorded: every new flow (--flows all)".into()
    } else {
        "connections this node's agent recorded: denied flows, and every flow of an \
         endpoint with staged policy (`agent run --flows all` records all)"
            .into()
    }
}

/// A flows query's filter, compiled against the daemon's view, with the
/// models that blame staged policies when the query is about staged policy.
pub(super) struct Selection {
    pub(super) matcher: Matcher,
    pub(super) blame: Option<Blame>,
}

impl Selection {
    pub(super) fn new(filter: &FlowFilter, shared: &Shared, view: &View) -> Result<Self, String> {
        let matcher = Matcher::new(filter).and_then(|m| m.resolve(view))?;
        // Blame (and `--staged`) by the evaluator, on the model at query time:
        // only when the query is about staged policy (it clones the model).
        let blame = if filter.pending_diff || !filter.staged.is_empty() {
            let model = lock(&shared.inner).enforced.good.model.clone();
            Some(Blame::new(&model, &filter.staged)?)
        } else {
            None
        };
        Ok(Selection { matcher, blame })
    }
}

fn annotate(judge: Option<&Judge>, f: Arc<Flow>) -> Arc<Flow> {
    match judge {
        Some(j) => Arc::new(j.annotate(&f)),
        None => f,
    }
}

/// The history's records that match, oldest first: the last `q.last`, or
/// those seen in the last `q.since_ms` (see [`super::protocol`]).
pub(super) fn matching_history(
    q: &FlowQuery,
    selection: &Selection,
    judge: Option<&Judge>,
    shared: &Shared,
    view: &View,
) -> Vec<Arc<Flow>> {
    let history = lock(&shared.flows).history();
    let cutoff = q
        .since_ms
        .map(|ms| unix_now_ns().saturating_sub(ms.saturating_mul(1_000_000)));
    let mut selected: Vec<_> = history
        .into_iter()
        .filter(|f| cutoff.is_none_or(|c| f.last_seen_ns >= c))
        .map(|f| annotate(judge, f))
        .filter(|f| selection.matcher.matches(f, view))
        .collect();
    super::protocol::keep_last(q, &mut selected);
    selected
}

/// Promotion lines go with queries that select by policy or verdict, not
/// with those that select connections (`--from`, `--to`, `--port`,
/// `--protocol`): a promotion is not a connection.
fn wants_promotions(f: &FlowFilter) -> bool {
    f.from.is_none() && f.to.is_none() && f.port.is_none() && f.protocol.is_none()
}

/// The promotion events to follow and those kept (none when the filter
/// selects connections).
fn promotion_events(
    q: &FlowQuery,
    shared: &Shared,
) -> (
    tokio::sync::broadcast::Receiver<Arc<PromotionEvent>>,
    Vec<Arc<PromotionEvent>>,
) {
    let c = lock(&shared.confirmations);
    let past = match wants_promotions(&q.filter) {
        true => c.events.iter().cloned().collect(),
        false => Vec::new(),
    };
    (c.events_tx.subscribe(), past)
}

async fn write_promotion(
    w: &mut (impl AsyncWriteExt + Unpin),
    e: &PromotionEvent,
) -> std::io::Result<()> {
    write_line(
        w,
        &PromotionLine {
            promotion: e.clone(),
        },
    )
    .await
}

async fn flows(
    q: FlowQuery,
    shared: &Shared,
    w: &mut (impl AsyncWriteExt + Unpin),
    mut r: impl AsyncBufReadExt + Unpin,
) -> std::io::Result<()> {
    let view = lock(&shared.view).clone();
    let selection = match Selection::new(&q.filter, shared, &view) {
        Ok(s) => s,
        Err(e) => return write_line(w, &ErrorReply { error: e }).await,
    };
    let judge = selection.blame.as_ref().map(Blame::judge);
    // Subscribe before reading the history so nothing falls between the two.
    let mut rx = shared.tx.subscribe();
    let (mut promotions, past) = promotion_events(&q, shared);
    let selected = matching_history(&q, &selection, judge.as_ref(), shared, &view);
    // Promotion lines where they fall among the flows (by time), from the
    // oldest flow sent on (or the whole --since window).
    let from_ns = match (q.since_ms, selected.first()) {
        (Some(ms), _) => unix_now_ns().saturating_sub(ms.saturating_mul(1_000_000)),
        (None, Some(f)) => f.last_seen_ns,
        (None, None) => 0,
    };
    let mut past = past.into_iter().filter(|e| e.at_ns >= from_ns).peekable();
    for f in &selected {
        while let Some(e) = past.next_if(|e| e.at_ns <= f.last_seen_ns) {
            write_promotion(w, &e).await?;
        }
        write_line(w, f.as_ref()).await?;
    }
    for e in past {
        write_promotion(w, &e).await?;
    }
    if !q.follow {
        return Ok(());
    }
    w.flush().await?;
    let mut buf = String::new();
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(f) => {
                    let f = annotate(judge.as_ref(), f);
                    let view = lock(&shared.view).clone();
                    if selection.matcher.matches(&f, &view) {
                        write_line(w, f.as_ref()).await?;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "a flows client is too slow; records skipped");
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            e = promotions.recv(), if wants_promotions(&q.filter) => match e {
                Ok(e) => write_promotion(w, &e).await?,
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Ok(()),
            },
            // The client hung up (EOF) or sent something: stop.
            n = r.read_line(&mut buf) => {
                if n.unwrap_or(0) == 0 { return Ok(()); }
                buf.clear();
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_never_removes_anything_but_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file, a directory and a symlink are left alone, with a clear error.
        let file = dir.path().join("file");
        std::fs::write(&file, "precious").unwrap();
        let err = bind(&file).unwrap_err().to_string();
        assert!(err.contains("a regular file, not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
        let sub = dir.path().join("dir");
        std::fs::create_dir(&sub).unwrap();
        let err = bind(&sub).unwrap_err().to_string();
        assert!(err.contains("a directory, not a socket"), "{err}");
        assert!(sub.is_dir());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = bind(&link).unwrap_err().to_string();
        assert!(err.contains("a symlink, not a socket"), "{err}");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());

        // A live socket is refused; a stale one is replaced.
        let sock = dir.path().join("agent.sock");
        let live = bind(&sock).unwrap();
        let err = bind(&sock).unwrap_err().to_string();
        assert!(err.contains("another agent is serving"), "{err}");
        drop(live);
        let again = bind(&sock).unwrap();
        drop(again);
    }
}
