// The tsls console: plain JavaScript, no build step, nothing from elsewhere. Data reaches the page as
// text nodes only (never as HTML), so nothing in the ledger can run in it.
"use strict";

const state = { session: null, timer: null, stream: null, page: null };
const $ = (selector, root = document) => root.querySelector(selector);
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fb3", "#c2571a", "#1e7b34", "#8a3ab9", "#b3261e", "#0f7c8c", "#7a6a00", "#5f6b7a"];

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

class ApiError extends Error {
  constructor(body, status) {
    super(body.message || "error");
    this.code = body.code; this.human = body.human; this.status = status; this.details = body.details || {};
  }
}

async function api(path, body) {
  const options = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["content-type"] = "application/json";
    options.headers["x-tsls-csrf"] = state.session ? state.session.csrf : "";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: { code: "INTERNAL_ERROR", message: "not JSON" } }));
  if (!response.ok) {
    if (response.status === 401) { location.href = "/"; }
    throw new ApiError(data.error || {}, response.status);
  }
  return data;
}

function notice(text, isError = false) {
  const el = $("#notice");
  el.textContent = text;
  el.className = isError ? "error" : "";
  el.hidden = false;
}

function explain(err) {
  if (err instanceof ApiError) return `${err.human} ${err.message} (${err.code})`;
  return String(err);
}

function every(ms, f) {
  const run = () => f().catch((e) => notice(explain(e), true));
  run();
  state.timer = setInterval(run, ms);
}

// --- charts -------------------------------------------------------------------------------------

function barRow(label, issued, total, available) {
  const width = 400, height = 18;
  const w = total ? Math.round((issued / total) * width) : 0;
  return h("div", { class: "bar-row", "data-bar": label },
    h("span", {}, label),
    s("svg", { width: "100%", height, viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" },
      s("title", {}, `${label}: ${issued} issued of ${total}, ${available} available`),
      s("rect", { x: 0, y: 0, width, height, fill: "var(--avail)", rx: 3 }),
      s("rect", { x: 0, y: 0, width: w, height, fill: "var(--issued)", rx: 3 })),
    h("span", { class: "muted" },
      h("b", { "data-field": "issued" }, issued), " issued / ", h("b", { "data-field": "total" }, total),
      " (", h("b", { "data-field": "available" }, available), " available)"));
}

function lineChart(labels, series, title) {
  const W = 560, H = 220, L = 44, B = 28, T = 12, R = 12;
  const top = Math.max(1, ...series.flatMap((x) => x.values));
  const magnitude = 10 ** Math.floor(Math.log10(top / 4));
  const tick = [1, 2, 5, 10].map((m) => m * magnitude).find((t) => t * 4 >= top) || magnitude * 10;
  const unit = Math.max(1, tick);
  const max = unit * Math.ceil(top / unit);
  // Dates (YYYY-MM-DD) are placed by time, so a gap of months looks like one; other labels evenly.
  const times = labels.map((label) => (/^\d{4}-\d{2}-\d{2}$/.test(label) ? Date.parse(label) : NaN));
  const span = times[times.length - 1] - times[0];
  const byTime = labels.length > 1 && times.every((t) => !Number.isNaN(t)) && span > 0;
  const x = (i) => L + (labels.length < 2 ? (W - L - R) / 2 :
    byTime ? ((times[i] - times[0]) * (W - L - R)) / span : (i * (W - L - R)) / (labels.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" }, s("title", {}, title));
  for (let v = 0; v <= max; v += unit) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e6eaef" }),
      s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v));
  }
  const GAP = 80;                        // a label is about 65 wide: keep them apart, the last one always shown
  let drawn = -Infinity;
  labels.forEach((label, i) => {
    const at = x(i), last = i === labels.length - 1;
    if (!last && (at - drawn < GAP || x(labels.length - 1) - at < GAP)) return;
    const anchor = last && i > 0 ? "end" : i === 0 && labels.length > 1 ? "start" : "middle";
    svg.append(s("text", { x: at, y: H - 8, "text-anchor": anchor, "data-label": label }, label));
    drawn = at;
  });
  series.forEach((line) => {
    // A count that holds until it changes (step: true) is drawn as steps, not as a slope between changes.
    const points = line.values.map((v, i) => (line.step && i > 0 ? `${x(i)},${y(line.values[i - 1])} ` : "") +
      `${x(i)},${y(v)}`).join(" ");
    svg.append(s("polyline", { points, fill: "none", stroke: line.color, "stroke-width": 2,
      "stroke-dasharray": line.dashed ? "5 4" : "none" }));
    line.values.forEach((v, i) => svg.append(s("circle", { cx: x(i), cy: y(v), r: 2.5, fill: line.color })));
  });
  const legend = h("div", { class: "legend" }, series.map((line) =>
    h("span", {}, h("i", { class: "swatch", "data-color": line.color }), line.name)));
  legend.querySelectorAll(".swatch").forEach((el) => { el.style.background = el.dataset.color; });
  return h("div", {}, svg, legend);
}

// --- pages --------------------------------------------------------------------------------------

const pages = {};

pages.dashboard = (view) => {
  view.append(h("h1", {}, "Dashboard"));
  const body = h("div", { id: "dashboard" });
  view.append(body);
  every(2000, async () => {
    const d = await api("/api/dashboard");
    const a = d.activation;
    const counts = Object.entries(d.licenses);
    body.replaceChildren(
      h("div", { class: "cards" },
        h("div", { class: "card" }, h("h2", {}, "Activation"),
          h("div", { class: "big", id: "activation" }, a.status.replace("_", " ")),
          h("div", { class: "muted" }, a.license_server_id ? `license server ID ${a.license_server_id}` : "no license server ID"),
          h("div", { class: "muted" }, a.activated_at ? `${a.method}, ${a.activated_at}` : "")),
        h("div", { class: "card" }, h("h2", {}, "Lab clock"), h("div", { class: "big", id: "now" }, d.now),
          h("div", { class: "muted" }, d.lab_clock ? "a lab clock: tsls-admin clock moves it" : "real time"),
          h("div", { class: "muted" }, `product ID ${d.product_id}`)),
        h("div", { class: "card" }, h("h2", {}, "Licenses"),
          h("table", { id: "license-counts" }, counts.length ? counts.map(([k, n]) =>
            h("tr", { "data-count": k }, h("td", {}, k.replace(":", " ")), h("td", { class: "num" }, n))) :
            h("tr", {}, h("td", { class: "muted" }, "none issued yet"))),
          h("div", { class: "muted" }, `${d.expiring_soon} ${d.expiring_soon === 1 ? "expires" : "expire"} within 7 days`))),
      h("div", { class: "card" }, h("h2", {}, "Alerts"),
        h("ul", { class: "alerts", id: "alerts" }, d.alerts.length ? d.alerts.map((al) => h("li", { class: al.level }, al.message)) :
          h("li", { class: "info" }, "Nothing needs your attention."))),
      h("div", { class: "card", id: "cals" }, h("h2", {}, "CALs by version and type"),
        h("div", { class: "legend" }, h("span", {}, h("i", { class: "swatch issued" }), "issued"),
          h("span", {}, h("i", { class: "swatch avail" }), "available")),
        d.cals.length ? d.cals.map((c) => barRow(`${c.product_version} ${c.cal_type.replace("_", " ")}`, c.issued, c.total, c.available)) :
          h("p", { class: "muted" }, "No key packs installed.")),
      h("div", { class: "card" }, h("h2", {}, "Revocations"),
        h("table", {}, h("tr", {}, ["version", "installed", "limit", "revoked", "may revoke now", "next allowed"].map((t) => h("th", {}, t))),
          d.revocations.map((r) => h("tr", {}, h("td", {}, r.product_version), h("td", { class: "num" }, r.installed),
            h("td", { class: "num" }, r.limit), h("td", { class: "num" }, r.revoked), h("td", { class: "num" }, r.left),
            h("td", {}, r.next_allowed_at || "-"))))));
    body.querySelectorAll(".swatch.issued").forEach((el) => { el.style.background = "var(--issued)"; });
    body.querySelectorAll(".swatch.avail").forEach((el) => { el.style.background = "var(--avail)"; });
  });
};

const LICENSE_COLUMNS = [["license_id", "ID"], ["kind", "Kind"], ["status", "Status"], ["hwid", "Device (HWID)"],
  ["machine", "Machine"], ["user", "User"], ["terminal_server", "Session host"], ["product_version", "Version"],
  ["issued_at", "Issued"], ["expires_at", "Expires"]];

pages.licenses = (view) => {
  const q = state.licenses || (state.licenses = { sort: "license_id", dir: "desc", offset: 0, limit: 50, q: "",
    kind: "", status: "", product_version: "", terminal_server: "", live: true });
  const select = (name, options) => h("select", { name, onchange: (e) => { q[name] = e.target.value; q.offset = 0; refresh(); } },
    options.map((o) => h("option", { value: o, selected: q[name] === o }, o || `any ${name.replace("_", " ")}`)));
  const search = h("input", { type: "search", name: "q", placeholder: "search device, machine, user, host", value: q.q, size: 34 });
  let typing;
  search.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { q.q = search.value; q.offset = 0; refresh(); }, 250); });
  const host = h("input", { name: "terminal_server", placeholder: "session host", value: q.terminal_server, size: 12,
    onchange: (e) => { q.terminal_server = e.target.value; q.offset = 0; refresh(); } });
  const live = h("input", { type: "checkbox", checked: q.live, onchange: (e) => { q.live = e.target.checked; } });
  const table = h("table", { id: "licenses" });
  const pager = h("div", { class: "pager" });
  view.append(h("h1", {}, "Issued licenses"),
    h("div", { class: "filters" }, search, select("kind", ["", "temporary", "permanent"]),
      select("status", ["", "active", "upgraded", "expired", "revoked"]),
      select("product_version", ["", "2000", "2003", "2008", "2008R2", "2012", "2016", "2019", "2022", "2025"]), host,
      h("label", {}, live, " refresh every second")),
    table, pager);

  async function refresh() {
    const params = new URLSearchParams();
    for (const k of ["sort", "dir", "offset", "limit", "q", "kind", "status", "product_version", "terminal_server"]) {
      if (q[k] !== "") params.set(k, q[k]);
    }
    const page = await api(`/api/licenses?${params}`);
    const head = h("tr", {}, LICENSE_COLUMNS.map(([key, label]) => h("th", {
      class: `sortable${q.sort === key ? " sorted" : ""}${q.sort === key && q.dir === "desc" ? " desc" : ""}`,
      "data-sort": key,
      onclick: () => { q.dir = q.sort === key && q.dir === "asc" ? "desc" : "asc"; q.sort = key; q.offset = 0; refresh(); },
    }, label)), h("th", {}, ""));
    const rows = page.rows.map((r) => h("tr", { "data-license": r.license_id },
      LICENSE_COLUMNS.map(([key]) => h("td", { "data-field": key, class: key === "license_id" ? "num" : key === "hwid" ? "clip" : "",
        title: key === "hwid" ? r.hwid : null }, r[key] ?? "")),
      h("td", {}, state.session.role === "admin" && r.kind === "permanent" && r.status === "active" ?
        h("button", { type: "button", class: "revoke", onclick: () => revoke(r).then(refresh) }, "Revoke") : "")));
    table.replaceChildren(head, ...rows);
    const last = Math.min(page.offset + page.limit, page.total);
    pager.replaceChildren(
      h("button", { type: "button", disabled: page.offset === 0, onclick: () => { q.offset = Math.max(0, q.offset - q.limit); refresh(); } }, "‹ Previous"),
      h("span", { id: "range" }, page.total ? `${page.offset + 1}–${last} of ` : "0 of ", h("b", { id: "total" }, page.total)),
      h("button", { type: "button", disabled: last >= page.total, onclick: () => { q.offset += q.limit; refresh(); } }, "Next ›"));
  }
  every(1000, () => (q.live || !state.page ? refresh() : Promise.resolve()));
  state.page = "licenses";
};

async function revoke(license) {
  const rooms = await api("/api/revocations");
  const room = rooms.find((r) => r.product_version === license.product_version) || { left: 0, limit: 0, revoked: 0 };
  const text = room.left > 0 ?
    `After this one, ${room.left - 1} more Windows Server ${license.product_version} Per Device CALs may be revoked now ` +
    `(at most ${room.limit} of the ${room.installed} installed may be revoked at once; ${room.revoked} are).` :
    `No more Windows Server ${license.product_version} Per Device CALs may be revoked until ${room.next_allowed_at}: ` +
    "the license server will refuse.";
  $("#confirm-title").textContent = `Revoke CAL ${license.license_id} of ${license.machine} (${license.hwid})?`;
  $("#confirm-text").textContent = `The device's seat is freed at once. ${text}`;
  const dialog = $("#confirm");
  dialog.returnValue = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  if (dialog.returnValue !== "ok") return;
  try {
    const result = await api("/api/revoke", { license_id: license.license_id });
    notice(result.message);
  } catch (e) {
    notice(explain(e), true);
  }
}

pages.events = (view) => {
  const f = { text: "", event_id: "", terminal_server: "" };
  const rows = h("tbody", {});
  const status = h("span", { id: "live", class: "muted" }, "connecting…");
  let seen = 0;
  const matches = (e) => (!f.event_id || String(e.event_id) === f.event_id) &&
    (!f.terminal_server || (e.terminal_server || "").includes(f.terminal_server)) &&
    (!f.text || JSON.stringify(e).toLowerCase().includes(f.text.toLowerCase()));
  const all = [];
  const row = (e, fresh) => h("tr", { class: fresh ? "new" : "", "data-event": e.id },
    h("td", { class: "num" }, e.id), h("td", {}, e.at), h("td", { class: "num" }, e.event_id), h("td", {}, e.name),
    h("td", {}, e.terminal_server || ""), h("td", { class: "clip", title: e.hwid }, e.hwid || ""), h("td", {}, e.user || ""), h("td", { class: "num" }, e.license_id ?? ""),
    h("td", { class: "message" }, e.message));
  const redraw = () => rows.replaceChildren(...all.filter(matches).slice(-300).reverse().map((e) => row(e, false)));
  const add = (e) => {
    if (e.id <= seen) return;
    seen = e.id; all.push(e);
    if (all.length > 2000) all.splice(0, all.length - 2000);
    if (matches(e)) { rows.prepend(row(e, true)); while (rows.children.length > 300) rows.lastChild.remove(); }
  };
  const input = (name, placeholder, size) => h("input", { name, placeholder, size,
    oninput: (ev) => { f[name] = ev.target.value.trim(); redraw(); } });
  view.append(h("h1", {}, "Events ", status),
    h("div", { class: "filters" }, input("text", "contains…", 24), input("event_id", "event ID", 8), input("terminal_server", "session host", 12)),
    h("table", { class: "events", id: "events" }, h("thead", {}, h("tr", {},
      ["#", "At", "Event", "Name", "Session host", "Device", "User", "License", "Message"].map((t) => h("th", {}, t)))), rows));
  const catchUp = async () => { (await api(`/api/events?after=${seen}&limit=200`)).forEach(add); };
  const stream = new EventSource("/api/events/stream");
  state.stream = stream;
  stream.addEventListener("open", () => { status.textContent = "live"; catchUp().catch((e) => notice(explain(e), true)); });
  stream.addEventListener("error", () => { status.textContent = "reconnecting…"; });
  stream.addEventListener("ledger", (m) => add(JSON.parse(m.data)));
};

pages.reports = (view) => {
  const start = h("input", { type: "date", name: "start" });
  const end = h("input", { type: "date", name: "end" });
  const usage = h("div", { id: "usage" });
  const cals = h("div", { id: "issued-cals" });
  const csv = h("a", { href: "/api/reports/usage.csv", download: "per-user-usage.csv" }, "CSV");
  async function load() {
    const params = new URLSearchParams();
    if (start.value) params.set("start", start.value);
    if (end.value) params.set("end", end.value);
    csv.href = `/api/reports/usage.csv?${params}`;
    const r = await api(`/api/reports/usage?${params}`);
    usage.replaceChildren(
      h("p", {}, `${r.start} … ${r.end}: `, h("b", {}, r.users_seen), " users seen, ", h("b", {}, r.per_user_cals_installed),
        " Per User CALs installed, peak ", h("b", {}, r.peak_users_per_day), " a day, ", h("b", {}, r.users_over_installed), " over."),
      r.per_day.length ? lineChart(r.per_day.map((d) => d.day), [{ name: "users a day", color: COLORS[0], values: r.per_day.map((d) => d.users) }], "Per User usage a day") : "",
      h("table", {}, h("tr", {}, h("th", {}, "User"), h("th", { class: "num" }, "Logons"), h("th", {}, "Last seen")),
        r.users.slice(0, 200).map((u) => h("tr", {}, h("td", {}, u.user), h("td", { class: "num" }, u.logons), h("td", {}, u.last_seen)))));
    const issued = await api("/api/reports/cals?limit=100");
    cals.replaceChildren(h("table", {}, h("tr", {}, ["ID", "Status", "Device", "Machine", "User", "Version", "Key pack", "Issued", "Expires"].map((t) => h("th", {}, t))),
      issued.map((c) => h("tr", {}, [c.license_id, c.status, c.hwid, c.machine, c.user, c.product_version, c.key_pack_id, c.issued_at, c.expires_at].map((v) => h("td", {}, v ?? ""))))));
  }
  start.addEventListener("change", () => load().catch((e) => notice(explain(e), true)));
  end.addEventListener("change", () => load().catch((e) => notice(explain(e), true)));
  view.append(h("h1", {}, "Reports"),
    h("div", { class: "card" }, h("h2", {}, "Per User CAL usage ", csv), h("div", { class: "filters" }, "from ", start, " to ", end), usage),
    h("div", { class: "card" }, h("h2", {}, "Issued CALs (newest 100) ", h("a", { href: "/api/reports/cals.csv", download: "issued-cals.csv" }, "CSV of all")), cals));
  load().catch((e) => notice(explain(e), true));
};

pages.hosts = (view) => {
  const body = h("div", {});
  view.append(h("h1", {}, "Session hosts"), body);
  const admin = state.session.role === "admin";
  const change = async (path, payload) => {
    try { await api(path, payload); notice("Saved."); } catch (e) { notice(explain(e), true); }
  };
  every(3000, async () => {
    const r = await api("/api/hosts");
    body.replaceChildren(
      h("p", {}, h("label", {}, h("input", { type: "checkbox", id: "policy", checked: r.security_group_policy, disabled: !admin,
        onchange: (e) => change("/api/policy", { security_group: e.target.checked }) }),
      " License server security group policy: only session hosts in the Terminal Server Computers group get licenses")),
      h("table", { id: "hosts" }, h("tr", {}, ["Session host", "Registered", "In the group", "Registered at", "Last seen"].map((t) => h("th", {}, t))),
        r.terminal_servers.map((t) => h("tr", { "data-host": t.name }, h("td", {}, t.name), h("td", {}, t.registered ? "yes" : "no"),
          h("td", {}, h("input", { type: "checkbox", checked: t.group, disabled: !admin || !t.registered,
            onchange: (e) => change("/api/hosts/group", { name: t.name, member: e.target.checked }) })),
          h("td", {}, t.registered_at || "-"), h("td", {}, t.last_seen || "-")))));
  });
};

pages.history = (view) => {
  const body = h("div", { class: "charts", id: "history" });
  view.append(h("h1", {}, "History"), body);
  every(5000, async () => {
    const r = await api("/api/history");
    const charts = r.versions.map((v, i) => h("div", { class: "card" }, h("h2", {}, `Windows Server ${v.product_version}: Per Device CALs issued and installed`),
      lineChart(v.points.map((p) => p.day), [
        { name: "installed", color: "#7a8794", dashed: true, step: true, values: v.points.map((p) => p.installed) },
        { name: "issued and held", color: COLORS[i % COLORS.length], step: true, values: v.points.map((p) => p.issued) }],
      `CALs issued against installed, Windows Server ${v.product_version}`)));
    const refusals = h("div", { class: "card" }, h("h2", {}, "Refused logons by reason"),
      r.refusals.length ? lineChart(r.days, r.refusals.map((x, i) => ({ name: `${x.reason} (${x.total})`, color: COLORS[(i + 1) % COLORS.length],
        values: r.days.map((d) => x.per_day[d] || 0) })), "Refused logons per day by reason") : h("p", { class: "muted" }, "No logon was refused."));
    body.replaceChildren(...(charts.length ? charts : [h("div", { class: "card" }, h("p", { class: "muted" }, "No key packs yet."))]), refusals);
  });
};

function route() {
  clearInterval(state.timer);
  state.timer = null;
  if (state.stream) { state.stream.close(); state.stream = null; }
  state.page = null;
  const name = (location.hash || "#dashboard").slice(1);
  const page = pages[name] ? name : "dashboard";
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === `#${page}`));
  $("#notice").hidden = true;
  const view = $("#view");
  view.replaceChildren();
  view.dataset.page = page;
  pages[page](view);
}

async function start() {
  state.session = await api("/api/session");
  $("#role").textContent = state.session.role;
  $("#logout").addEventListener("click", async () => { await api("/api/logout", {}); location.href = "/"; });
  window.addEventListener("hashchange", route);
  route();
}

start().catch((e) => notice(explain(e), true));
