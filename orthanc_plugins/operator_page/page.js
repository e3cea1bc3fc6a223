// PIXL's operator page: reads ../status every 5 s and renders it; on orthanc-raw, the fetch
// controls post to ../control. Every value is set with textContent (never parsed as HTML).
"use strict";

const STUDY_STATES = ["queued", "fetching", "anonymising", "exported", "not_found", "refused", "failed"];
// URLs built from location.origin: a page opened as http://user:pass@host/ has a base URL
// with credentials, and fetch() refuses URLs resolved against it.
const base = location.origin + location.pathname.replace(/[^/]*$/, "");
const statusUrl = new URL("../status", base).href;
const controlUrl = new URL("../control", base).href;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function num(value) {
  const cell = el("td", value);
  if (!value) cell.classList.add("zero");
  return cell;
}

function codes(map) {
  const entries = Object.entries(map || {});
  return entries.length ? entries.map(([code, n]) => code + " " + n).join(", ") : "";
}

function fetchText(f) {
  if (!f) return "asking the VNA";
  if (f.hold === "paused") return "PAUSED" + (f.paused_by ? " by " + f.paused_by : "") + ", until resumed";
  if (f.hold === "outside_hours") return "OUTSIDE VNA HOURS " + f.vna_hours + (f.vna_weekends ? " and weekends" : "") + ", until " + new Date(f.until).toLocaleString();
  return "asking the VNA";
}

function renderStudies(data) {
  const table = document.getElementById("studies");
  const head = table.tHead;
  head.replaceChildren();
  const row = el("tr");
  row.append(el("th", "project"));
  for (const state of STUDY_STATES) row.append(el("th", state));
  const raw = data.service === "orthanc-raw";
  if (raw) row.append(el("th", "fetching from the VNA", "text"), el("th", ""));
  head.append(row);
  const body = table.tBodies[0];
  body.replaceChildren();
  const fetchState = data.fetch || {};
  for (const [project, info] of Object.entries(data.projects || {})) {
    const tr = el("tr");
    tr.dataset.project = project;
    tr.append(el("td", project));
    for (const state of STUDY_STATES) {
      const cell = num(info.studies[state]);
      cell.dataset.state = state;
      if (state === "failed" && info.studies[state]) cell.classList.add("bad");
      tr.append(cell);
    }
    if (raw) {
      const own = fetchState[project];
      const all = fetchState["*"];
      const held = (all && all.hold) ? all : (own && own.hold ? own : null);
      const status = el("td", held ? fetchText(held) : "asking the VNA", held ? "text held" : "text ok");
      status.dataset.fetch = held ? held.hold : "asking";
      const paused = own && own.paused;
      const button = el("button", paused ? "Resume" : "Pause");
      button.type = "button";
      button.dataset.action = paused ? "resume" : "pause";
      button.dataset.project = project;
      button.addEventListener("click", () => control({ action: button.dataset.action, project }));
      const buttonCell = el("td");
      buttonCell.append(button);
      tr.append(status, buttonCell);
    }
    body.append(tr);
    const reasons = [];
    const s = info.reasons.studies;
    if (codes(s.refused)) reasons.push("refused: " + codes(s.refused));
    if (codes(s.failed)) reasons.push("failed: " + codes(s.failed));
    if (codes(s.backing_off)) reasons.push("waiting to retry: " + codes(s.backing_off));
    const r = info.reasons.reports;
    if (codes(r.failed)) reasons.push("reports failed: " + codes(r.failed));
    if (codes(r.backing_off)) reasons.push("reports waiting: " + codes(r.backing_off));
    if (reasons.length) {
      const why = el("tr", null, "reasons");
      why.dataset.reasonsFor = project;
      const cell = el("td", "why: " + reasons.join(" · "));
      cell.colSpan = STUDY_STATES.length + (raw ? 3 : 1);
      why.append(cell);
      body.append(why);
    }
  }
}

function renderFetch(data) {
  const section = document.getElementById("fetch");
  const raw = data.service === "orthanc-raw";
  section.classList.toggle("hidden", !raw);
  document.getElementById("throughput-section").classList.toggle("hidden", !raw);
  if (!raw) return;
  const all = (data.fetch || {})["*"] || {};
  const parts = [fetchText(all)];
  if (all.studies_per_second) parts.push(all.studies_per_second + " studies/s, " + all.max_in_flight + " in flight");
  parts.push(all.vna_hours ? "VNA hours " + all.vna_hours + (all.vna_weekends ? " and weekends" : "") : "VNA hours: any time");
  parts.push(data.vna_reachable === 0 ? "the VNA does not answer (C-ECHO)" : "the VNA answers");
  const summary = document.getElementById("fetch-summary");
  summary.textContent = "All projects: " + parts.join(" · ");
  summary.className = all.hold || data.vna_reachable === 0 ? "held" : "";
  const scope = document.getElementById("scope");
  const chosen = scope.value;
  // The secondary archive's own pause, rate and hours, once it has settings (issue 11).
  const archives = Object.keys(data.fetch || {}).filter((n) => n.startsWith("archive:"));
  const names = ["*", ...archives, ...Object.keys(data.projects || {})];
  const label = (n) => (n === "*" ? "all projects" : n.startsWith("archive:") ? n.slice(8) + " archive" : n);
  if (scope.options.length !== names.length) {
    scope.replaceChildren(...names.map((n) => { const o = el("option", label(n)); o.value = n; return o; }));
    scope.value = names.includes(chosen) ? chosen : "*";
  }
  fillScope(data);
  const body = document.querySelector("#throughput tbody");
  body.replaceChildren();
  for (const [project, t] of Object.entries(data.throughput || {})) {
    const tr = el("tr");
    tr.append(el("td", project), num(t.fetched_per_min_5), num(t.fetched_per_min_60), num(t.exported_per_min_5), num(t.exported_per_min_60));
    body.append(tr);
  }
}

let lastData = null;
let filledFor = null;
function fillScope(data) {
  const scope = document.getElementById("scope").value;
  if (filledFor === scope) return;  // do not overwrite what the operator is typing
  filledFor = scope;
  const f = (data.fetch || {})[scope] || {};
  document.getElementById("rate").value = f.studies_per_second || "";
  document.getElementById("in-flight").value = f.max_in_flight || "";
  document.getElementById("hours").value = f.vna_hours || "";
  document.getElementById("weekends").checked = !!f.vna_weekends;
}

function renderAnon(data) {
  const anon = data.service === "orthanc-anon";
  document.getElementById("anon-section").classList.toggle("hidden", !anon);
  if (!anon) return;
  const body = document.querySelector("#anon tbody");
  body.replaceChildren();
  for (const [project, a] of Object.entries(data.anon || {})) {
    const tr = el("tr");
    tr.dataset.project = project;
    const destError = ((data.projects || {})[project] || {}).destination_error;
    const reachable = el("td", a.destination_reachable ? "reachable" : "UNREACHABLE (paused, probing)", a.destination_reachable ? "text ok" : "text bad");
    if (destError) reachable.title = "last error: " + destError.message + " (" + destError.at + ")";
    tr.append(
      el("td", project), el("td", codes(a.instances_refused) || "-", "text"), el("td", codes(a.pixel_text) || "-", "text"),
      num(a.export_queue), num(a.export_deferred), reachable,
      el("td", a.last_export ? new Date(a.last_export).toLocaleString() : "-", "text"),
      el("td", destError ? destError.message : (a.last_export_error || "-"), (destError || a.last_export_error) ? "text bad" : "text"));
    body.append(tr);
  }
  document.getElementById("descriptors").textContent =
    "Free-text descriptors emptied since this orthanc-anon started, by kind of finding: " + (codes(data.descriptor_findings) || "none");
}

function renderReports(data) {
  const body = document.querySelector("#reports tbody");
  body.replaceChildren();
  for (const [project, info] of Object.entries(data.projects || {})) {
    const r = info.reports, v = info.review;
    const tr = el("tr");
    tr.dataset.project = project;
    const flagged = num(r.flagged);
    if (r.flagged) flagged.classList.add("held");
    const command = el("td", null, "text");
    if (r.flagged) command.append(el("code", "pixl reports flagged " + project));
    tr.append(el("td", project), num(r.checked), flagged, num(v.approved), num(v.redacted), num(v.rejected),
      num(r.exported), num(r.missing), num(r.failed), command);
    body.append(tr);
  }
}

function render(data) {
  lastData = data;
  document.getElementById("service").textContent = data.service;
  document.title = "PIXL · " + data.service;
  const banner = document.getElementById("banner");
  if (data.database === "unreachable") {
    banner.className = "banner error";
    banner.textContent = "The PIXL database does not answer: the figures below are this process's counters only.";
  } else if (data.identifiable) {
    banner.className = "banner identifiable";
    banner.textContent = "This instance (orthanc-raw) holds IDENTIFIABLE patient data fetched from the hospital archive. This page shows counts, reason codes and project names only.";
  } else {
    banner.className = "banner deidentified";
    banner.textContent = "orthanc-anon holds de-identified studies until they are exported. This page shows counts, reason codes and project names only.";
  }
  renderFetch(data);
  renderStudies(data);
  renderAnon(data);
  renderReports(data);
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

async function refresh() {
  try {
    const response = await fetch(statusUrl, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (error) {
    document.getElementById("updated").textContent = "cannot read /pixl/status (" + error.message + ")";
  }
}

async function control(body) {
  const message = document.getElementById("message");
  message.textContent = "…";
  try {
    const response = await fetch(controlUrl, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const text = await response.text();
    let answer = {};
    try { answer = JSON.parse(text); } catch (e) { answer = {}; }
    if (response.status === 403) message.textContent = "This user may look but not change anything (log in as an Orthanc user with full rights).";
    else if (!response.ok) message.textContent = "Refused: " + (answer.error || "HTTP " + response.status);
    else message.textContent = "Done: " + (answer.project === "*" ? "all projects" : answer.project) + ", " + fetchText(answer.fetch);
    message.className = response.ok ? "ok" : "bad";
  } catch (error) {
    message.textContent = "Could not send: " + error.message;
    message.className = "bad";
  }
  filledFor = null;
  await refresh();
}

function scopeValue() { return document.getElementById("scope").value; }
document.getElementById("scope").addEventListener("change", () => { filledFor = null; if (lastData) fillScope(lastData); });
document.getElementById("pause").addEventListener("click", () => control({ action: "pause", project: scopeValue() }));
document.getElementById("resume").addEventListener("click", () => control({ action: "resume", project: scopeValue() }));
document.getElementById("set-rate").addEventListener("click", () => control({
  action: "rate", project: scopeValue(),
  studies_per_second: Number(document.getElementById("rate").value),
  max_in_flight: Number(document.getElementById("in-flight").value),
}));
document.getElementById("set-hours").addEventListener("click", () => control({
  action: "hours", project: scopeValue(),
  hours: document.getElementById("hours").value || "off",
  weekends: document.getElementById("weekends").checked,
}));
refresh();
setInterval(refresh, 5000);
