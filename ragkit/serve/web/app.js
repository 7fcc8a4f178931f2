// The page of `ragkit serve`: ask (a streamed, cited answer and why each source came back), documents
// (upload, jobs, list, filter, delete) and the index (counts, settings, the latest eval report).
// Plain JavaScript, no build step: every request goes to this server's /v1 API with the key kept in
// sessionStorage, and every text from the server is inserted as text (textContent), never as HTML.
"use strict";

const KEY_STORAGE = "ragkit.key";
const PAGE_SIZE = 50;
const FILTER_PAGES = 20; // pages of 1000 walked when filtering by source
const SVG = "http://www.w3.org/2000/svg";
const $ = (selector, root = document) => root.querySelector(selector);

const state = { keysNeeded: false, defaultMode: "auto", cursors: [null], page: 0, next: null, plotUrl: null };

// -- small DOM helpers ------------------------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("#error").hidden = true;
  $("#error").textContent = "";
}

function number(value, digits) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

// -- the API and the key --------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// fetch() against the API: the key added, a JSON body sent as JSON, an error answered with the message of the
// JSON error body ({"error": {"message"}}), a 401 showing the key form. Returns the Response.
async function api(path, { method = "GET", json, body, retries = 5 } = {}) {
  const headers = authHeaders();
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body });
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try {
    const data = await response.json();
    if (data && data.error && data.error.message) message = data.error.message;
  } catch (_) { /* not JSON: the status line says it */ }
  if (response.status === 401) askForKey(message);
  if (response.status === 503 && retries > 0 && method === "GET") { // still warming up: try again shortly
    await new Promise((resolve) => setTimeout(resolve, 1000));
    return api(path, { method, json, body, retries: retries - 1 });
  }
  throw new ApiError(response.status, message);
}

const getJson = async (path) => (await api(path)).json();

// Runs an action from the UI; its failure is shown in #error (a 401 has already shown the key form).
async function guarded(action) {
  try {
    await action();
  } catch (error) {
    showError(error instanceof ApiError || error instanceof Error ? error.message : String(error));
  }
}

function askForKey(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  $("#key-form").hidden = false;
  $("#key-status").textContent = message ? `key required: ${message}` : "key required";
  $("#key-input").focus();
}

async function useKey(event) {
  event.preventDefault();
  const key = $("#key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("#key-input").value = "";
  $("#key-form").hidden = true;
  clearError();
  await guarded(start);
}

// -- tabs ---------------------------------------------------------------------------------------------------------

const TABS = ["ask", "documents", "index"];

function selectTab(name, focus = false) {
  for (const other of TABS) {
    const tab = $(`#tab-${other}`);
    const chosen = other === name;
    tab.setAttribute("aria-selected", String(chosen));
    tab.tabIndex = chosen ? 0 : -1;
    $(`#${other}`).hidden = !chosen;
    if (chosen && focus) tab.focus();
  }
  if (name === "documents") guarded(() => loadDocuments(true));
  if (name === "index") guarded(loadIndex);
}

function tabKeys(event) { // the arrow keys move between tabs (WAI-ARIA tabs pattern)
  const at = TABS.indexOf(event.target.id.replace("tab-", ""));
  const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -at, End: TABS.length - 1 - at };
  if (!(event.key in moves)) return;
  event.preventDefault();
  selectTab(TABS[(at + moves[event.key] + TABS.length) % TABS.length], true);
}

// -- start: who am I, which modes ------------------------------------------------------------------------------

async function start() {
  const auth = await (await fetch("/web/auth")).json();
  state.keysNeeded = Boolean(auth.keys);
  if (state.keysNeeded && !sessionStorage.getItem(KEY_STORAGE)) {
    askForKey("");
    return;
  }
  const info = await getJson("/v1/index");
  $("#key-form").hidden = true;
  $("#key-status").textContent = !state.keysNeeded ? "no key needed"
    : info.tenant !== null ? `tenant: ${info.tenant}` : `key: ${info.key} (every tenant)`;
  state.defaultMode = info.settings.retrieval.mode;
  const models = await getJson("/v1/models");
  const modes = models.data.map((m) => m.id).filter((id) => id.startsWith("ragkit-")).map((id) => id.slice(7));
  const select = $("#mode");
  select.replaceChildren(...modes.map((mode) => el("option", { value: mode, text: mode })));
  select.value = modes.includes(state.defaultMode) ? state.defaultMode : (modes.includes("auto") ? "auto" : modes[0]);
  $("#k").value = String(info.settings.retrieval.k);
  $("#k").max = String(info.settings.retrieval.max_k);
  const open = TABS.find((name) => !$(`#${name}`).hidden);
  if (open !== "ask") selectTab(open);
}

// -- ask ----------------------------------------------------------------------------------------------------------

// The server-sent events of a response body, as parsed JSON payloads, up to "[DONE]".
async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
    if (done) return;
  }
}

async function ask(event) {
  event.preventDefault();
  clearError();
  const question = $("#question").value.trim();
  const k = Number($("#k").value);
  if (!question) return showError("type a question first");
  if (!Number.isInteger(k) || k < 1) return showError("k must be a whole number of at least 1");
  const answerBox = $("#answer");
  answerBox.replaceChildren();
  $("#answer-meta").textContent = "";
  $("#sources").replaceChildren();
  $("#ask-button").disabled = true;
  answerBox.setAttribute("aria-busy", "true");
  try {
    const response = await api("/v1/ask", { method: "POST", json: { question, k, mode: $("#mode").value, stream: true } });
    let final = null;
    for await (const event of serverSentEvents(response)) {
      if (typeof event.delta === "string") answerBox.append(event.delta);
      else if (event.answer) final = event.answer;
      else if (event.error) throw new ApiError(500, event.error.message);
    }
    if (!final) throw new Error("the answer stream ended without its final event");
    renderAnswer(final);
  } finally {
    $("#ask-button").disabled = false;
    answerBox.removeAttribute("aria-busy");
  }
}

// The answer's text with [n] as links to source n and each unsupported sentence marked.
function renderAnswer(answer) {
  const text = answer.answer || "";
  const cited = answer.citations.length;
  const marks = [];
  let from = 0;
  for (const sentence of answer.unsupported || []) {
    const at = text.indexOf(sentence, from) >= 0 ? text.indexOf(sentence, from) : text.indexOf(sentence);
    if (at < 0 || marks.some(([s, e]) => at < e && at + sentence.length > s)) continue;
    marks.push([at, at + sentence.length]);
    from = at + sentence.length;
  }
  marks.sort((a, b) => a[0] - b[0]);
  const box = $("#answer");
  box.replaceChildren();
  let cursor = 0;
  for (const [s, e] of marks) {
    appendCited(box, text.slice(cursor, s), cited);
    const mark = el("mark", { class: "unsupported", title: "no source supports this" });
    appendCited(mark, text.slice(s, e), cited);
    box.append(mark);
    cursor = e;
  }
  appendCited(box, text.slice(cursor), cited);
  if (!text) box.append(el("p", { class: "hint", text: "(no answer)" }));
  const meta = [`generator: ${answer.generator}`, `mode: ${answer.mode}`, `degraded: ${answer.degraded ? "yes" : "no"}`];
  if (answer.reason) meta.push(`reason: ${answer.reason}`);
  if (answer.unsupported && answer.unsupported.length) meta.push(`${answer.unsupported.length} unsupported sentence(s)`);
  if (answer.timings_ms) meta.push(`${number(answer.timings_ms.retrieve, 0)} ms retrieve, ${number(answer.timings_ms.answer, 0)} ms answer`);
  $("#answer-meta").textContent = meta.join(" · ");
  $("#answer-meta").classList.toggle("degraded", Boolean(answer.degraded));
  renderSources(answer);
}

function appendCited(parent, text, cited) {
  const pattern = /\[(\d+)\]/g;
  let cursor = 0;
  for (let match; (match = pattern.exec(text)) !== null;) {
    const n = Number(match[1]);
    if (n < 1 || n > cited) continue;
    parent.append(text.slice(cursor, match.index));
    parent.append(el("a", { class: "citation", href: `#source-${n}`, text: `[${n}]` }));
    cursor = match.index + match[0].length;
  }
  parent.append(text.slice(cursor));
}

// Sources: the cited hits in citation order (so [n] is source-n), then the other hits.
function renderSources(answer) {
  const byChunk = new Map(answer.hits.map((hit) => [hit.chunk_id, hit]));
  const ordered = answer.citations.map((c) => byChunk.get(c.chunk_id) || { ...c, score: null, retriever: "", text: "" });
  const citedIds = new Set(answer.citations.map((c) => c.chunk_id));
  ordered.push(...answer.hits.filter((hit) => !citedIds.has(hit.chunk_id)));
  const names = new Map(answer.hits.map((hit) => [hit.chunk_id, hit.source])); // a path's chunks by their file
  $("#sources").replaceChildren(...ordered.map((hit, i) => sourceItem(hit, i + 1, i < answer.citations.length, names)));
}

function sourceItem(hit, n, cited, names) {
  const item = el("li", { class: cited ? "source cited" : "source", id: `source-${n}` },
    el("div", { class: "source-head" },
      el("span", { class: "source-number", text: `[${n}]` }),
      el("span", { class: "source-file", text: hit.source }),
      el("span", { class: "source-score", text: `score ${number(hit.score, 3)}` }),
      cited ? el("span", { class: "badge", text: "cited" }) : null),
    el("p", { class: "source-retrievers", text: signals(hit).join(" · ") }));
  const path = graphPath(hit.explain, names);
  if (path) item.append(pathGraph(path, n), el("p", { class: "path-text", text: pathText(path) }));
  const details = el("details", { class: "source-text", open: cited },
    el("summary", { text: `passage (characters ${hit.start ?? "?"}–${hit.end ?? "?"})` }),
    el("p", { class: "chunk-text", text: hit.text }));
  item.append(details);
  return item;
}

// Why a hit came back: its retriever, then what the mode explained (route, ranks, seeds, reranking).
function signals(hit) {
  const explain = hit.explain || {};
  const graph = explain.graph || explain;
  const out = [`retriever: ${hit.retriever || "?"}`];
  if (explain.route) out.push(`route: ${explain.route}`);
  if ("bm25_rank" in explain) out.push(explain.bm25_rank === null ? "not in BM25's top hits" : `BM25 #${explain.bm25_rank + 1}`);
  if (typeof graph.dense_rank === "number") out.push(`dense #${graph.dense_rank + 1}${graph.kept_dense ? " (kept)" : ""}`);
  if (graph.dense_only) out.push("dense hit outside the graph");
  if (typeof graph.path_score === "number" && graph.hops > 0) out.push(`path score ${number(graph.path_score, 3)} (${graph.hops} hop(s))`);
  if (graph.seed_entities && graph.seed_entities.length) out.push(`PageRank seeds: ${graph.seed_entities.join(", ")}`);
  if (typeof explain.rerank_score === "number") {
    out.push(`reranked: ${number(explain.rerank_score, 3)}, was #${explain.first_stage_rank}`);
  }
  return out;
}

// A graph explanation as a chain of nodes ({kind, label}) and the edge labels between them; null for none.
// A chunk is named by its file when it is among the hits, else by the start of its id.
function graphPath(explain, names = new Map()) {
  const graph = explain && (explain.graph || explain);
  if (!graph) return null;
  const nodes = [];
  const edges = [];
  let pending = "";
  let lastChunk = null;
  const add = (kind, label) => {
    if (nodes.length) edges.push(pending);
    const chunk = kind === "chunk";
    nodes.push({ kind, label: chunk ? names.get(label) || `chunk ${label.slice(0, 10)}` : label, id: chunk ? label : null });
    pending = "";
    if (chunk) lastChunk = label;
  };
  for (const step of graph.path || []) {
    if (step.relation === "linked from question") {
      add("question", `“${step.phrase ?? step.entity}”`);
      pending = "linked";
      add("entity", step.entity);
    } else if (step.relation === "dense hit") {
      add("chunk", step.chunk);
      nodes[nodes.length - 1].note = `dense #${(step.dense_rank ?? -1) + 1}`;
    } else if (step.relation === "about" || step.relation === "mentioned in") {
      if (step.chunk && step.chunk !== lastChunk) { pending = step.relation; add("chunk", step.chunk); }
    } else {
      if (step.chunk && step.chunk !== lastChunk) { pending = "mentioned in"; add("chunk", step.chunk); }
      pending = step.relation || "";
      if (step.entity) add("entity", step.entity);
    }
  }
  if (!nodes.length && graph.seed_entities && graph.seed_entities.length) {
    add("entity", graph.seed_entities.join(", "));
    if (graph.via_entities && graph.via_entities.length) { pending = "PageRank"; add("entity", graph.via_entities.join(", ")); }
  }
  return nodes.length ? { nodes, edges } : null;
}

function pathText({ nodes, edges }) {
  const label = (node) => (node.kind === "chunk" ? `[${node.label}]` : node.label) + (node.note ? ` (${node.note})` : "");
  return nodes.map((node, i) => (i === 0 ? "" : edges[i - 1] ? ` —${edges[i - 1]}→ ` : " → ") + label(node)).join("");
}

// The path drawn top to bottom: entities as rounded boxes, chunks as square ones, the question as a dashed one,
// the relation labels beside the arrows. Narrow enough for a phone.
function pathGraph({ nodes, edges }, n) {
  const width = 340, boxHeight = 28, gap = 40, x = 12;
  const height = nodes.length * boxHeight + (nodes.length - 1) * gap + 8;
  const arrow = `arrow-${n}`;
  const picture = svg("svg", { class: "path-graph", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": `graph path: ${pathText({ nodes, edges })}` });
  const marker = svg("marker", { id: arrow, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head" }));
  const defs = svg("defs");
  defs.append(marker);
  picture.append(defs);
  nodes.forEach((node, i) => {
    const y = 4 + i * (boxHeight + gap);
    const shown = (node.kind === "chunk" ? `[${node.label}]` : node.label) + (node.note ? ` ${node.note}` : "");
    const text = shown.length > 44 ? `${shown.slice(0, 43)}…` : shown;
    const boxWidth = Math.min(width - 2 * x, 16 + text.length * 7);
    const group = svg("g", { class: `node ${node.kind}` });
    group.append(svg("title", {}, node.id ? `${shown} (chunk ${node.id})` : shown));
    group.append(svg("rect", { x, y, width: boxWidth, height: boxHeight, rx: node.kind === "entity" ? 14 : 3 }));
    group.append(svg("text", { x: x + 8, y: y + boxHeight / 2 + 4 }, text));
    picture.append(group);
    if (i < nodes.length - 1) {
      const top = y + boxHeight, bottom = y + boxHeight + gap;
      picture.append(svg("line", { x1: x + 20, y1: top, x2: x + 20, y2: bottom - 1, class: "edge",
        "marker-end": `url(#${arrow})` }));
      if (edges[i]) picture.append(svg("text", { x: x + 30, y: top + gap / 2 + 4, class: "edge-label" }, edges[i]));
    }
  });
  return picture;
}

// -- documents ----------------------------------------------------------------------------------------------------

async function loadDocuments(reset = false) {
  if (reset) Object.assign(state, { cursors: [null], page: 0 });
  const filter = $("#filter-source").value.trim().toLowerCase();
  let documents, total;
  if (filter) { // walk the pages (the API lists by id) and keep the sources that match
    documents = [];
    let cursor = null;
    for (let page = 0; page < FILTER_PAGES; page++) {
      const data = await getJson(`/v1/documents?limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
      documents.push(...data.documents.filter((d) => (d.source || "").toLowerCase().includes(filter)));
      total = data.total;
      cursor = data.next_cursor;
      if (!cursor) break;
    }
    state.next = null;
    $("#page-info").textContent = `${documents.length} of ${total} documents match`;
  } else {
    const cursor = state.cursors[state.page];
    const data = await getJson(`/v1/documents?limit=${PAGE_SIZE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    documents = data.documents;
    total = data.total;
    state.next = data.next_cursor;
    const first = state.page * PAGE_SIZE;
    $("#page-info").textContent = total ? `${first + 1}–${first + documents.length} of ${total} documents` : "no documents yet";
  }
  $("#prev-page").disabled = Boolean(filter) || state.page === 0;
  $("#next-page").disabled = !state.next;
  $("#documents-table tbody").replaceChildren(...documents.map(documentRow));
}

function documentRow(doc) {
  const remove = el("button", { type: "button", class: "delete-button", "aria-label": `Delete ${doc.source}`, text: "Delete" });
  remove.addEventListener("click", () => guarded(() => deleteDocument(doc)));
  return el("tr", { class: "document", "data-id": doc.id },
    el("td", { class: "document-source", text: doc.source }),
    el("td", { class: "document-title", text: doc.title || "" }),
    el("td", { class: "document-chunks", text: String(doc.chunks) }),
    el("td", {}, remove));
}

async function deleteDocument(doc) {
  if (!window.confirm(`Delete ${doc.source} (${doc.chunks} chunks) from the index?`)) return;
  clearError();
  await api(`/v1/documents/${encodeURIComponent(doc.id)}`, { method: "DELETE" });
  $("#job-status").textContent = `deleted ${doc.source}`;
  await loadDocuments();
}

async function upload(files) {
  if (!files.length) return;
  clearError();
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const status = $("#job-status");
  status.textContent = `uploading ${files.length} file(s)…`;
  const data = await (await api("/v1/documents", { method: "POST", body: form })).json();
  let job = data.job;
  while (job.status === "queued" || job.status === "running") {
    status.textContent = progressText(job);
    await new Promise((resolve) => setTimeout(resolve, 500));
    job = (await getJson(`/v1/jobs/${encodeURIComponent(job.id)}`)).job;
  }
  if (job.status !== "done") {
    status.textContent = `failed: ${job.error || "the upload failed"}`;
    throw new Error(job.error || "the upload failed");
  }
  const report = job.report || {};
  status.textContent = `done: ${job.documents.length} document(s) indexed (${report.chunks ?? "?"} chunks)`
    + (job.errors.length ? `; ${job.errors.length} not loaded: ${job.errors.map((e) => `${e.source}: ${e.reason}`).join("; ")}` : "");
  $("#upload-input").value = "";
  await loadDocuments(true);
}

function progressText(job) {
  const p = job.progress || {};
  const part = (name) => (p[name] ? `${name} ${p[name].done}${p[name].total ? `/${p[name].total}` : ""}` : null);
  return `${job.status}: ${[part("files"), part("documents"), part("chunks")].filter(Boolean).join(", ")}`;
}

// -- index --------------------------------------------------------------------------------------------------------

async function loadIndex() {
  const info = await getJson("/v1/index");
  for (const [name, value] of Object.entries(info.counts)) {
    const cell = $(`[data-stat="${name}"]`);
    if (!cell) continue;
    cell.textContent = value === null ? "–" : value.toLocaleString();
    cell.title = value === null ? (info.tenant !== null ? "index-wide: not shown to a tenant's key" : "this index has no graph") : "";
  }
  $("#stats-note").textContent = info.counts_scope === "tenant"
    ? `Documents and chunks of tenant ${info.tenant}; entities and relations belong to the whole index and are not shown.`
    : "";
  renderSettings(info.settings);
  await renderReport(info.report);
}

function renderSettings(s) {
  const rows = [
    ["embedder", `${s.embedder.model} (${s.embedder.dimension} dimensions)`],
    ["chunking", Object.entries(s.chunking).filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v}`).join(", ")],
    ["vectors", `${s.vectors.backend}, ${s.vectors.kind}, ${s.vectors.shards} shard(s)`],
    ["knowledge graph", s.graph ? "yes" : "no"],
    ["retrieval", `mode ${s.retrieval.mode}, k ${s.retrieval.k} (at most ${s.retrieval.max_k})`
      + (s.retrieval.rerank ? `, reranked by ${s.retrieval.rerank}` : "")],
    ["modes", s.retrieval.modes.join(", ")],
    ["generator", s.generator.name],
    ["grounding", s.grounding.enabled ? "on" : "off"],
  ];
  $("#settings").replaceChildren(...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })]));
}

const METRIC_ORDER = ["recall", "hit", "all_recall", "precision", "mrr", "ndcg", "map"];

function metricKey(name) {
  const [base, k] = name.split("@");
  const rank = METRIC_ORDER.indexOf(base);
  return [rank < 0 ? METRIC_ORDER.length : rank, Number(k) || 0, name];
}

async function renderReport(report) {
  const box = $("#eval-report");
  if (state.plotUrl) URL.revokeObjectURL(state.plotUrl);
  state.plotUrl = null;
  if (!report) {
    box.replaceChildren(el("p", { text: "No evaluation report in this index yet. Make one with:" }),
      el("pre", {}, el("code", { text: "ragkit eval gold.jsonl --index INDEX --report INDEX/reports/run-1" })),
      el("p", { class: "hint", text: "The newest reports/*/report.json under the index directory is shown here." }));
    return;
  }
  if (report.error) {
    box.replaceChildren(el("p", { text: `The latest report (${report.path}) cannot be shown: ${report.error}` }));
    return;
  }
  const modes = Object.keys(report.results);
  const names = new Set();
  for (const mode of modes) {
    for (const [name, value] of Object.entries(report.results[mode])) if (typeof value === "number" && name.includes("@")) names.add(name);
  }
  const sorted = [...names].sort((a, b) => {
    const [x, y] = [metricKey(a), metricKey(b)];
    return x[0] - y[0] || x[1] - y[1] || x[2].localeCompare(y[2]);
  });
  const rows = sorted.map((name) => [name, ...modes.map((m) => number(report.results[m][name], 3))]);
  for (const p of ["p50", "p90", "p99"]) {
    rows.push([`latency ${p} (ms)`, ...modes.map((m) => number((report.results[m].latency_ms || {})[p], 1))]);
  }
  rows.push(["queries/s", ...modes.map((m) => number(report.results[m].queries_per_s, 1))]);
  const table = el("table", { class: "report-table" },
    el("caption", { text: `${report.dataset}: ${report.queries} queries` + (report.passages ? `, ${report.passages} passages` : "") }),
    el("thead", {}, el("tr", {}, ...["metric", ...modes].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...rows.map(([name, ...cells]) => el("tr", {}, el("th", { scope: "row", text: name }),
      ...cells.map((c) => el("td", { text: c }))))));
  const parts = [el("p", { class: "hint", text: `${report.path}, written ${report.modified}` }), el("div", { class: "table-wrap" }, table)];
  if (report.plot) { // fetched with the key (an <img src> cannot send it), shown as a blob: URL
    const blob = await (await api(report.plot)).blob();
    state.plotUrl = URL.createObjectURL(blob);
    parts.push(el("img", { id: "eval-plot", src: state.plotUrl, alt: `recall@k against k for ${modes.join(", ")}` }));
  }
  box.replaceChildren(...parts);
}

// -- wiring -------------------------------------------------------------------------------------------------------

function wire() {
  for (const name of TABS) {
    $(`#tab-${name}`).addEventListener("click", () => selectTab(name));
    $(`#tab-${name}`).addEventListener("keydown", tabKeys);
  }
  $("#key-form").addEventListener("submit", useKey);
  $("#ask-form").addEventListener("submit", (event) => guarded(() => ask(event)));
  $("#upload-input").addEventListener("change", (event) => guarded(() => upload([...event.target.files])));
  const zone = $("#dropzone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  // a file dropped beside the zone must not make the browser leave the page to open it
  for (const name of ["dragover", "drop"]) window.addEventListener(name, (event) => event.preventDefault());
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    guarded(() => upload([...event.dataTransfer.files]));
  });
  let typing = null;
  $("#filter-source").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => guarded(() => loadDocuments(true)), 250);
  });
  $("#prev-page").addEventListener("click", () => { state.page -= 1; guarded(() => loadDocuments()); });
  $("#next-page").addEventListener("click", () => {
    state.cursors[state.page + 1] = state.next;
    state.page += 1;
    guarded(() => loadDocuments());
  });
  guarded(start);
}

wire();
