// The operations dashboard: plain DOM, no framework, no build step.
// The token lives in sessionStorage (this tab only) and goes with every /api request as a bearer header.
// Every value from the API is set as text, never as HTML.
"use strict";

const REFRESH_MS = Number(document.body.dataset.refreshMs) || 3000;
const PAGE_SIZE = 25;
const state = {
  token: sessionStorage.getItem("adminToken"),
  name: sessionStorage.getItem("adminName"),
  role: null,
  jobsPage: 1,
  deadPage: 1,
  detailId: null,
  timer: null,
};

const $ = (selector) => document.querySelector(selector);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    logout("The token was refused; log in again.");
    throw new ApiError(401, { message: "not logged in" });
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// ---- formatting ----------------------------------------------------------------------------------

function ago(isoTime) {
  if (!isoTime) return "–";
  const seconds = Math.max(0, (Date.now() - new Date(isoTime).getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(isoTime).toISOString().slice(0, 16).replace("T", " ");
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function timeCell(isoTime) {
  return el("td", { title: isoTime || "" }, ago(isoTime));
}

function progressBar(fraction) {
  if (fraction === null || fraction === undefined) return el("span", { class: "muted" }, "–");
  const percent = Math.round(fraction * 100);
  return el("span", { class: "progress" }, el("progress", { max: 100, value: percent }), ` ${percent}%`);
}

function healthBadge(healthy, reason) {
  return el("span", { class: `badge ${healthy ? "ok" : "bad"}`, title: reason || "" }, healthy ? "healthy" : "unhealthy");
}

function fillTable(selector, rows, emptyText, columns) {
  const body = $(`${selector} tbody`);
  const width = $(`${selector} thead tr`).children.length;
  body.replaceChildren(
    ...(rows.length ? rows.map(columns) : [el("tr", {}, el("td", { colSpan: width, class: "muted" }, emptyText))]),
  );
}

function pager(selector, page, total, onPage) {
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  $(selector).replaceChildren(
    el("button", { type: "button", disabled: page <= 1, onclick: () => onPage(page - 1) }, "‹ Newer"),
    ` page ${page} of ${pages} (${total}) `,
    el("button", { type: "button", disabled: page >= pages, onclick: () => onPage(page + 1) }, "Older ›"),
  );
}

function flash(text, kind = "ok") {
  const node = $("#flash");
  node.textContent = text;
  node.className = `flash ${kind}`;
  node.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { node.hidden = true; }, 8000);
}

function formQuery(form) {
  const query = new URLSearchParams();
  for (const [key, value] of new FormData(form)) if (value.trim() !== "") query.set(key, value.trim());
  return query;
}

function confirmAction(text) {
  const dialog = $("#confirm-dialog");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// ---- views ---------------------------------------------------------------------------------------

async function renderOverview() {
  const report = await api("GET", "/api/health");
  renderHeader(report);
  $("#health-reason").textContent = report.reason;
  $("#health-card").className = `card ${report.healthy ? "healthy" : "unhealthy"}`;
  $("#figure-workers").textContent = `${report.workers.filter((w) => w.healthy).length} / ${report.workers.length}`;
  $("#figure-queues").textContent = report.queues.length;
  $("#figure-waiting").textContent = report.queues.reduce((sum, q) => sum + q.waiting, 0);
  $("#figure-dead").textContent = report.dead_letters_unresolved;
  fillTable("#workers-table", report.workers, "No worker has reported.", (worker) => {
    const job = worker.current_job;
    return el("tr", { dataset: { worker: worker.worker_id } },
      el("td", { title: worker.worker_id }, `${worker.host} · pid ${worker.pid}`),
      el("td", {}, worker.queues.join(", ")),
      el("td", {}, job ? el("a", { href: `#jobs`, title: job.message_id }, job.actor_name) : el("span", { class: "muted" }, "idle")),
      el("td", {}, job ? progressBar(job.progress) : ""),
      el("td", { class: "num" }, worker.processed),
      el("td", { class: "num" }, worker.failed),
      el("td", { title: worker.heartbeat_at || "" }, worker.heartbeat_age_s === null ? "–" : `${age(worker.heartbeat_age_s)} ago`),
      el("td", {}, healthBadge(worker.healthy, worker.reason), " ", el("span", { class: "muted small" }, worker.healthy ? "" : worker.reason)),
    );
  });
  fillTable("#queues-table", report.queues, "No queue is declared.", (queue) => el("tr", { dataset: { queue: queue.queue_name } },
    el("td", {}, queue.queue_name),
    el("td", { class: "num" }, queue.waiting),
    el("td", { class: "num" }, queue.delayed),
    el("td", { class: "num" }, queue.in_progress),
    el("td", {}, age(queue.oldest_waiting_age_s)),
    el("td", { class: "num" }, queue.dead),
    el("td", { class: "num" }, el("a", { href: "#dead-letters", onclick: () => filterDeadLetters(queue.queue_name) }, queue.dead_letters_unresolved)),
    el("td", {}, healthBadge(queue.healthy, queue.reason), " ", el("span", { class: "muted small" }, queue.healthy ? "" : queue.reason)),
  ));
}

function renderHeader(report) {
  $("#overall").replaceWith(Object.assign(healthBadge(report.healthy, report.reason), { id: "overall" }));
  $("#nav-dead-count").textContent = report.dead_letters_unresolved ? String(report.dead_letters_unresolved) : "";
}

async function renderJobs() {
  const query = formQuery($("#jobs-filter"));
  query.set("page", state.jobsPage);
  query.set("limit", PAGE_SIZE);
  const page = await api("GET", `/api/jobs?${query}`);
  fillTable("#jobs-table", page.jobs, "No job matches.", (job) => el("tr", { dataset: { messageId: job.message_id } },
    el("td", { class: "mono", title: job.message_id }, job.message_id.slice(0, 8)),
    el("td", {}, job.actor_name),
    el("td", {}, job.queue_name),
    el("td", {}, el("span", { class: `status ${job.status}` }, job.status)),
    el("td", {}, progressBar(job.progress)),
    el("td", { class: "num" }, job.attempts),
    timeCell(job.updated_at),
    el("td", { class: "small" }, job.error || ""),
  ));
  pager("#jobs-pager", page.page, page.total, (next) => { state.jobsPage = next; refresh(); });
}

function filterDeadLetters(queueName) {
  const form = $("#dead-filter");
  form.elements.queue.value = queueName;
  form.elements.resolved.value = "false";
  state.deadPage = 1;
}

async function renderDeadLetters() {
  const query = formQuery($("#dead-filter"));
  query.set("page", state.deadPage);
  query.set("limit", PAGE_SIZE);
  const page = await api("GET", `/api/dead-letters?${query}`);
  fillTable("#dead-stats-table", page.stats, "No dead letters.", (row) => el("tr", {},
    el("td", {}, row.queue), el("td", { class: "num" }, row.total), el("td", { class: "num" }, row.resolved),
    el("td", { class: "num" }, row.unresolved)));
  fillTable("#dead-table", page.dead_letters, "No dead letter matches.", (row) => el("tr", { dataset: { deadLetter: row.id } },
    el("td", { class: "num" }, el("a", { href: `#dead-letter/${row.id}` }, row.id)),
    timeCell(row.failed_at),
    el("td", {}, row.queue_name),
    el("td", {}, row.actor_name),
    el("td", {}, el("span", { class: `kind ${row.kind}` }, row.kind)),
    el("td", { class: "small", title: row.error_message }, `${row.error_type}: ${row.error_message}`.slice(0, 140)),
    el("td", { class: "num" }, row.attempts),
    el("td", { class: "state" }, stateText(row)),
    el("td", {}, el("a", { href: `#dead-letter/${row.id}` }, "Open")),
  ));
  pager("#dead-pager", page.page, page.total, (next) => { state.deadPage = next; refresh(); });
}

function stateText(row) {
  if (row.requeued_as) return `requeued as ${row.requeued_as.slice(0, 8)}`;
  if (row.resolved) return `resolved by ${row.resolved_by}`;
  return "unresolved";
}

async function renderDeadLetter() {
  const row = await api("GET", `/api/dead-letters/${state.detailId}`);
  $("#dl-title").textContent = `Dead letter ${row.id}: ${row.actor_name} on ${row.queue_name}`;
  const fields = [
    ["State", stateText(row)], ["Kind", row.kind], ["Attempts", row.attempts], ["Failed", row.failed_at],
    ["Message id", row.message_id], ["Resolved", row.resolved_at ? `${row.resolved_at} by ${row.resolved_by}` : "–"],
    ["Notes", row.notes || "–"], ["Requeued as", row.requeued_as || "–"],
  ];
  $("#dl-record").replaceChildren(...fields.flatMap(([name, value]) => [el("dt", {}, name), el("dd", { dataset: { field: name } }, value)]));
  $("#dl-error").textContent = `${row.error_type}: ${row.error_message}`;
  $("#dl-traceback").textContent = row.traceback || "(no traceback recorded)";
  $("#dl-payload").textContent = JSON.stringify(row.message, null, 2);
  $("#requeue-one").disabled = Boolean(row.requeued_as) || "malformed_body" in row.message;
}

const VIEWS = {
  overview: renderOverview,
  jobs: renderJobs,
  "dead-letters": renderDeadLetters,
  "dead-letter": renderDeadLetter,
};

function currentView() {
  const [name, id] = location.hash.replace(/^#/, "").split("/");
  if (name === "dead-letter" && /^\d+$/.test(id || "")) {
    state.detailId = Number(id);
    return "dead-letter";
  }
  return VIEWS[name] ? name : "overview";
}

async function refresh() {
  if (!state.token) return;
  const view = currentView();
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `${view}-view`;
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", view.startsWith(link.dataset.view));
  try {
    await VIEWS[view]();
    if (view !== "overview") renderHeader(await api("GET", "/api/health"));
    $("#refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (error.status !== 401) flash(error.message, "bad");
  }
}

// ---- actions -------------------------------------------------------------------------------------

async function act(action, success) {
  try {
    const result = await action();
    flash(success(result));
    await refresh();
  } catch (error) {
    if (error.status !== 401) flash(error.message, "bad");
  }
}

async function resolveOne(event) {
  event.preventDefault();
  const notes = $("#resolve-notes").value.trim();
  await act(() => api("PATCH", `/api/dead-letters/${state.detailId}`, { by: state.name, notes: notes || null }),
    (row) => `Dead letter ${row.id} resolved by ${row.resolved_by}.`);
  $("#resolve-notes").value = "";
}

function requeueOne() {
  return act(() => api("POST", `/api/dead-letters/${state.detailId}/requeue`),
    (result) => `Dead letter ${result.id} requeued as message ${result.requeued_as}.`);
}

async function deleteOne() {
  if (!(await confirmAction(`Delete dead letter ${state.detailId}? Its payload and traceback are gone for good.`))) return;
  await act(() => api("DELETE", `/api/dead-letters/${state.detailId}`), () => `Dead letter ${state.detailId} deleted.`);
  location.hash = "#dead-letters";
}

async function requeueMatching() {
  const form = $("#dead-filter");
  const body = {};
  for (const name of ["queue", "actor", "kind", "since"]) {
    const value = form.elements[name].value.trim();
    if (value) body[name] = value;
  }
  try {
    const preview = await api("POST", "/api/dead-letters/requeue", { ...body, dry_run: true });
    if (preview.matched === 0) return flash("No unresolved dead letter matches the filter.", "bad");
    const filterText = Object.entries(body).map(([key, value]) => `${key} ${value}`).join(", ") || "no filter";
    if (!(await confirmAction(`Requeue ${preview.matched} unresolved dead letter(s) matching ${filterText}? `
      + `Each becomes a new message for the workers (at most ${state.maxPerCall} per call).`))) return;
  } catch (error) {
    if (error.status !== 401) flash(error.message, "bad");
    return;
  }
  await act(() => api("POST", "/api/dead-letters/requeue", body), (result) => `${result.requeued.length} dead letter(s) requeued.`);
}

// ---- session -------------------------------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  state.token = $("#login-token").value.trim();
  state.name = $("#login-name").value.trim();
  try {
    const session = await api("GET", "/api/session");
    sessionStorage.setItem("adminToken", state.token);
    sessionStorage.setItem("adminName", state.name);
    $("#login-token").value = "";
    start(session);
  } catch (error) {
    state.token = null;
    $("#login-error").textContent = error.status === 401 || error.message === "not logged in"
      ? "That token is not valid." : error.message;
  }
}

function logout(message) {
  sessionStorage.removeItem("adminToken");
  state.token = null;
  clearInterval(state.timer);
  $("#login-view").hidden = false;
  $("#nav").hidden = true;
  $("#session").hidden = true;
  for (const section of document.querySelectorAll(".view")) section.hidden = true;
  $("#login-error").textContent = message || "";
}

function start(session) {
  state.role = session.role;
  state.maxPerCall = session.requeue_max_per_call;
  document.body.classList.toggle("read-only", session.role !== document.body.dataset.readWrite);
  $("#login-view").hidden = true;
  $("#nav").hidden = false;
  $("#session").hidden = false;
  $("#who").textContent = `${state.name || "?"} · ${session.role}${session.dev_mode ? " (dev mode)" : ""}`;
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
  refresh();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", () => logout("Logged out."));
  $("#resolve-form").addEventListener("submit", resolveOne);
  $("#requeue-one").addEventListener("click", requeueOne);
  $("#delete-one").addEventListener("click", deleteOne);
  $("#requeue-matching").addEventListener("click", requeueMatching);
  $("#jobs-filter").addEventListener("submit", (event) => { event.preventDefault(); state.jobsPage = 1; refresh(); });
  $("#dead-filter").addEventListener("submit", (event) => { event.preventDefault(); state.deadPage = 1; refresh(); });
  window.addEventListener("hashchange", refresh);
  $("#login-name").value = state.name || "";
  if (!state.token) return logout();
  try {
    start(await api("GET", "/api/session"));
  } catch (error) {
    if (error.status !== 401) logout(error.message);
  }
});
