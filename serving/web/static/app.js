// The page at `/`: plain DOM code over the service's own JSON API (no framework, no CDN, no build).
// Every piece of catalogue or user text goes in through textContent, never innerHTML, so a title
// such as `<img onerror=…>` is shown as text, not run.
"use strict";

const K = 10;
const state = { user: null, recs: [] };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function query(path, params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(name, value);
  }
  return `${path}?${search}`;
}

// A failed call names the endpoint and the service's own `detail`, and leaves the page usable.
async function api(url, options = {}) {
  const response = await fetch(url, options);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
      : text.slice(0, 200);
    throw new Error(`${url.split("?")[0]}: ${response.status} ${detail}`);
  }
  return body;
}

function show(id, message, isError = false) {
  const node = document.getElementById(id);
  node.textContent = message;
  node.classList.toggle("error", isError);
}

function label(item) {
  return item.title || `item ${item.item_id}`;
}

// One row for an item anywhere on the page: its title, score and actions.
function itemRow(item, { because = null, isNew = false } = {}) {
  const row = el("li", { class: isNew ? "item new" : "item", "data-item": item.item_id },
    el("span", { class: "title", text: label(item) }),
    el("span", { class: "score", text: item.score.toFixed(3) }),
    el("button", { type: "button", class: "similar-btn", text: "similar", onclick: () => showSimilar(item) }),
    el("button", { type: "button", class: "click-btn", text: "click", onclick: () => postClick(item) }));
  if (because) {
    const reasons = because.length ? because.map(label).join(" · ") : "no history item close to it";
    row.append(el("span", { class: "because", text: `because: ${reasons}` }));
  }
  return row;
}

function fillList(id, rows) {
  document.getElementById(id).replaceChildren(...rows);
}

async function loadRecommendations(previous = null) {
  const user = state.user;
  const answer = await api(query("recommend", { user, k: K }));
  const ids = answer.items.map((item) => item.item_id);
  let reasons = new Map();
  if (ids.length && answer.fallback === null) {
    const explained = await api(query("explain", { user, items: ids.join(","), n: 3 }));
    reasons = new Map(explained.items.map((entry) => [entry.item_id, entry.because]));
  }
  const before = previous ? new Set(previous) : null;
  fillList("recs", answer.items.map((item) => itemRow(item, {
    because: reasons.get(item.item_id) || null,
    isNew: before !== null && !before.has(item.item_id),
  })));
  const how = answer.fallback ? "unknown user: popular items (fallback)" : "ranked for this user";
  show("recs-status", `${answer.items.length} items for user ${user}, ${how}; model ${answer.model_version}`);
  state.recs = ids;
  return ids;
}

async function chooseUser(user) {
  state.user = user.trim();
  document.getElementById("user-input").value = state.user;
  try {
    await loadRecommendations();
  } catch (error) {
    show("recs-status", error.message, true);
  }
}

async function postClick(item) {
  if (!state.user) {
    show("status", "choose a user first: a click is an event of a user", true);
    return;
  }
  const previous = state.recs;
  try {
    const accepted = await api("events", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user: state.user, item: item.item_id, event: "click" }),
    });
    const now = await loadRecommendations(previous);
    const added = now.filter((id) => !previous.includes(id)).length;
    const unknown = accepted.unknown_items.length ? " (item unknown to this bundle: kept for the next retrain)" : "";
    const entry = `user ${state.user} clicked “${label(item)}”${unknown}: ${added} new in the top ${K}`;
    document.getElementById("activity").prepend(el("li", { text: entry }));
  } catch (error) {
    show("status", error.message, true);
  }
}

async function showSimilar(item) {
  show("similar-of", `Closest to “${label(item)}” in the item space:`);
  try {
    const answer = await api(query("similar", { item: item.item_id, k: K }));
    fillList("similar-list", answer.items.map((other) => itemRow(other)));
  } catch (error) {
    show("similar-of", error.message, true);
    fillList("similar-list", []);
  }
}

async function runSearch(text) {
  const personal = document.getElementById("search-personal").checked && state.user;
  try {
    const answer = await api(query("search", { q: text, k: K, user: personal ? state.user : null }));
    fillList("search-results", answer.items.map((item) => itemRow(item)));
    const order = answer.personalised ? `, ordered by user ${answer.user}'s taste` : "";
    show("search-status", `${answer.items.length} results for “${answer.query}”${order}`);
  } catch (error) {
    show("search-status", error.message, true);
    fillList("search-results", []);
  }
}

async function suggestUsers(prefix) {
  const answer = await api(query("users", { prefix, limit: 20 }));
  document.getElementById("user-options").replaceChildren(
    ...answer.users.map((user) => el("option", { value: user.user_id, text: `${user.history} items` })));
  return answer;
}

async function loadUserPicks() {
  const answer = await suggestUsers("");
  const picks = answer.users.slice(0, 8).map((user) =>
    el("button", { type: "button", class: "pick", "data-user": user.user_id, text: user.user_id,
      onclick: () => chooseUser(user.user_id) }));
  document.getElementById("user-picks").replaceChildren(
    ...picks, el("span", { class: "hint", text: ` of ${answer.total} known users` }));
}

async function loadVersion() {
  const version = await api("version");
  document.getElementById("version").textContent = version.bundle_version;
  show("version-detail", `(${version.kind}, built ${version.created_at}, data ${version.data_fingerprint})`);
  return version;
}

function cell(text, numeric = false) {
  return el("td", { class: numeric ? "num" : "", text });
}

function table(id, headers, rows) {
  const head = el("tr", {}, ...headers.map((name) => el("th", { text: name })));
  document.getElementById(id).replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

function fixed(value, digits) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}

function interval(pair, digits) {
  return Array.isArray(pair) ? `[${fixed(pair[0], digits)}, ${fixed(pair[1], digits)}]` : "";
}

function showImage(id, url) {
  const image = document.getElementById(id);
  image.addEventListener("load", () => { image.hidden = false; });
  image.src = url;
}

async function loadCard(version) {
  let card;
  try {
    card = await api("reports/card.json");
  } catch (error) {
    show("card-status", error.message, true);
    return;
  }
  const served = card.published_variant;
  const fingerprint = card.fingerprint === version.data_fingerprint ? "the served bundle's data"
    : `data ${card.fingerprint}, not the served bundle's (${version.data_fingerprint})`;
  show("card-status", `${card.dataset}: measured on ${fingerprint}; served variant ${served}. `
    + "NDCG@10 and HR@10 with 95 % bootstrap intervals over users; latency is the served path per request.");
  show("card-gate", card.gate && card.gate.decision ? `Gate: ${card.gate.decision}` : "");
  table("card-table", ["variant", "NDCG@10", "95 % interval", "HR@10", "MB", "served p50 ms", "p99 ms",
    "÷ teacher NDCG"], card.variants.map((row) => {
    const tr = el("tr", { class: row.name === served ? "served" : "" },
      cell(row.name), cell(fixed(row["NDCG@10"], 4), true), cell(interval(row["NDCG@10_ci"], 4)),
      cell(fixed(row["HR@10"], 4), true), cell(fixed(row.bytes / 1e6, 2), true),
      cell(fixed(row.served_p50_ms, 2), true), cell(fixed(row.served_p99_ms, 2), true),
      cell(Array.isArray(row.vs_teacher) ? fixed(row.vs_teacher[0], 3) : "–", true));
    return tr;
  }));
  showImage("card-img", "reports/card.png");
  showImage("search-img", "reports/search.png");
}

async function loadLoadTest() {
  let summary;
  try {
    summary = await api("reports/loadtest.json");
  } catch (error) {
    show("loadtest-status", error.message, true);
    return;
  }
  show("loadtest-status", `${summary.dataset}: ${summary.settings.traffic}. Only ratios within one run compare.`);
  table("loadtest-table", ["bundle", "mode", "req/s", "p50 ms", "p99 ms", "failures", "bundle MB"],
    summary.runs.map((run) => el("tr", {},
      cell(run.bundle), cell(run.mode), cell(fixed(run.rps, 0), true), cell(fixed(run.p50_ms, 2), true),
      cell(fixed(run.p99_ms, 2), true), cell(String(run.failures), true),
      cell(run.bundle_bytes ? fixed(run.bundle_bytes / 1e6, 1) : "–", true))));
  showImage("loadtest-img", "reports/loadtest.png");
}

function wireForms() {
  document.getElementById("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    chooseUser(document.getElementById("user-input").value);
  });
  document.getElementById("user-input").addEventListener("input", (event) => {
    suggestUsers(event.target.value.trim()).catch(() => {});  // suggestions only: typing goes on
  });
  document.getElementById("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch(document.getElementById("search-input").value);
  });
}

async function start() {
  wireForms();
  try {
    const version = await loadVersion();
    await Promise.all([loadUserPicks(), loadCard(version), loadLoadTest()]);
    document.body.dataset.ready = "true";  // the browser test waits for this
  } catch (error) {
    show("status", error.message, true);
  }
}

start();
