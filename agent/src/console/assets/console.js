// The agent's web console: fills the page from /api (see agent/src/console/mod.rs)
// and refreshes it. Data is only ever written as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function api(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

const peer = (p) => (p.namespace ? `${p.namespace}/${p.name}` : p.name || p.ip);
const clock = (rfc3339) => (rfc3339 || "").replace(/^.*T/, "").replace(/Z$/, "");
const verdict = (action) => el("span", { class: `verdict ${action}` }, action);

function showError(where, e) {
  $("error").textContent = e ? `${where}: ${e.message}` : "";
}

// --- staged report -------------------------------------------------------

function changeList(title, cls, changes) {
  const list = el("ul", { class: "changes" });
  for (const c of changes) {
    const seen = [];
    if (c.count != null) seen.push(`${c.count} connection${c.count === 1 ? "" : "s"}`);
    if (c.last_seen) seen.push(`last seen ${clock(c.last_seen)}`);
    if (c.nodes && c.nodes.length) seen.push(`node ${c.nodes.join(", ")}`);
    list.append(
      el("li", { class: `change ${cls}` },
        el("span", { class: "conn" }, `${c.from} -> ${c.to} ${c.protocol}/${c.port}`),
        seen.length ? el("span", { class: "seen" }, ` (${seen.join(", ")})`) : "")
    );
  }
  return [el("h4", { class: cls }, `${title} (${changes.length})`), list];
}

function renderPolicy(p) {
  const traffic = p.selected_with_traffic != null ? `, ${p.selected_with_traffic} with traffic` : "";
  const n = p.selects.length;
  const box = el("article", { class: "policy", "data-policy": p.policy },
    el("h3", {}, p.policy),
    el("p", { class: "selects" }, `selects ${n} endpoint${n === 1 ? "" : "s"}${traffic}: ${p.selects.join(", ") || "none"}`));
  if (!p.newly_denied.length && !p.newly_allowed.length) {
    box.append(el("p", { class: "clean" }, "no recorded connection would change"));
  }
  if (p.newly_denied.length) box.append(...changeList("would newly deny", "deny", p.newly_denied));
  if (p.newly_allowed.length) box.append(...changeList("would newly allow", "allow", p.newly_allowed));
  box.append(el("p", { class: "promote" }, "promote: ", el("code", {}, p.promote)));
  return box;
}

const stagedNames = new Set();

async function refreshReport() {
  const r = await api("api/report");
  const w = r.window;
  const out = [el("p", { class: "window" }, w.from ? `window: ${w.from} .. ${w.to}` : "window: none"),
    ...(w.notes || []).map((n) => el("p", { class: "note" }, n))];
  if (!r.policies.length) out.push(el("p", { class: "empty" }, "no staged policy"));
  out.push(...r.policies.map(renderPolicy));
  $("report").replaceChildren(...out);
  const select = document.querySelector("#filters select[name=staged]");
  for (const p of r.policies) {
    if (!stagedNames.has(p.policy)) {
      stagedNames.add(p.policy);
      select.append(el("option", { value: p.policy }, p.policy));
    }
  }
}

// --- matrix --------------------------------------------------------------

function renderPortMatrix(m) {
  const cell = new Map(m.cells.map((c) => [`${c.from}\u0000${c.to}`, c]));
  const head = el("tr", {}, el("th", { class: "corner" }, "from \\ to"), ...m.endpoints.map((e) => el("th", {}, e)));
  const rows = m.endpoints.map((from) =>
    el("tr", {}, el("th", {}, from), ...m.endpoints.map((to) => {
      const c = cell.get(`${from}\u0000${to}`);
      if (!c) return el("td", { class: "self" }, "-");
      const differs = c.enforced !== c.pending;
      return el("td", { class: differs ? "differs" : "", title: `${from} -> ${to} ${m.port}` },
        verdict(c.enforced), " / ", verdict(c.pending));
    })));
  return el("div", { class: "port" }, el("h3", {}, m.port),
    el("table", { class: "matrix" }, el("thead", {}, head), el("tbody", {}, ...rows)));
}

async function refreshMatrix() {
  const m = await api("api/matrix");
  $("matrix").replaceChildren(...(m.ports.length ? m.ports.map(renderPortMatrix) : [el("p", { class: "empty" }, "no workloads")]));
}

// --- flows ---------------------------------------------------------------

function flowParams() {
  const form = $("filters");
  const q = new URLSearchParams({ last: "500" });
  for (const name of ["verdict", "staged"]) {
    const v = form.elements[name].value;
    if (v) q.set(name, v);
  }
  if (form.elements.pending_diff.checked) q.set("pending_diff", "true");
  return q;
}

function matchesWorkload(f, text) {
  if (!text) return true;
  return [f.src, f.dst].some((p) => p.namespace && `${p.namespace}/${p.name}`.startsWith(text));
}

function renderFlow(f) {
  const pending = f.pending || f.enforced;
  return el("tr", { class: f.pending_differs ? "differs" : "" },
    el("td", {}, clock(f.time)),
    el("td", {}, peer(f.src)),
    el("td", {}, peer(f.dst)),
    el("td", {}, `${f.protocol}/${f.dst.port}`),
    el("td", { class: "num" }, f.count),
    el("td", { title: f.enforced.trace }, verdict(f.enforced.action)),
    el("td", { title: pending.trace }, verdict(pending.action)),
    el("td", {}, (f.changed_by || []).join(", ")),
    el("td", {}, `${f.reporter.endpoint} ${f.direction}`));
}

async function refreshFlows() {
  const r = await api(`api/flows?${flowParams()}`);
  const text = $("filters").elements.workload.value.trim();
  const rows = r.flows.filter((f) => matchesWorkload(f, text)).reverse().map(renderFlow);
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "9", class: "empty" }, "no flows match")));
  $("flows").tBodies[0].replaceChildren(...rows);
}

// --- refresh loop ----------------------------------------------------------

async function refresh(what, f) {
  try {
    await f();
    showError();
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    showError(what, e);
  }
}

async function refreshNodes() {
  const r = await api("api/nodes");
  $("nodes").textContent = `node${r.nodes.length === 1 ? "" : "s"}: ${r.nodes.join(", ")}`;
}

function every(ms, what, f) {
  refresh(what, f);
  setInterval(() => refresh(what, f), ms);
}

$("filters").addEventListener("input", () => refresh("flows", refreshFlows));
every(2000, "flows", refreshFlows);
every(3000, "staged report", refreshReport);
every(10000, "matrix", refreshMatrix);
every(30000, "nodes", refreshNodes);
