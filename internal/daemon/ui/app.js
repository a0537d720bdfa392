// The gatehouse status page. It reads the admin API (GET /status, scoped
// to the viewer by the daemon, and GET /ui/session) every few seconds and
// writes everything with textContent: names, subjects and reasons come
// from outside and are never parsed as HTML.
"use strict";

const refreshMs = 10000;
let session = null;
let pending = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fill(id, head, rows, empty) {
  const t = document.getElementById(id);
  t.replaceChildren();
  const tr = el("tr");
  head.forEach(h => tr.appendChild(el("th", h)));
  t.appendChild(tr);
  if (rows.length === 0) {
    const r = el("tr");
    const td = el("td", empty, "muted");
    td.colSpan = head.length;
    r.appendChild(td);
    t.appendChild(r);
    return;
  }
  rows.forEach(cells => {
    const r = el("tr");
    cells.forEach(c => {
      const td = el("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === undefined || c === null ? "" : String(c);
      r.appendChild(td);
    });
    t.appendChild(r);
  });
}

function age(t) {
  if (!t) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(t)) / 1000));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

function allowed(action, key, value) {
  return session && session.actions.some(a => a.action === action && a[key] === value);
}

// button shows an action the daemon said the viewer may take; clicking it
// asks for confirmation first.
function button(label, action, key, value) {
  if (!allowed(action, key, value)) return null;
  const b = el("button", label);
  b.type = "button";
  b.dataset.action = action;
  b.dataset[key] = value;
  b.addEventListener("click", () => ask(label + " " + value + "?", action, key, value));
  return b;
}

function buttons(...bs) {
  const span = el("span");
  bs.filter(b => b).forEach(b => span.appendChild(b));
  return span;
}

function ask(text, action, key, value) {
  pending = { action, key, value };
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm").hidden = false;
}

const endpoints = {
  feed_accept: v => "/feeds/accept?feed=" + encodeURIComponent(v),
  sessions_drain: v => "/sessions/drain?scope=" + encodeURIComponent(v),
  sessions_kill: v => "/sessions/kill?scope=" + encodeURIComponent(v),
};

async function confirmed() {
  const p = pending;
  pending = null;
  document.getElementById("confirm").hidden = true;
  if (!p) return;
  const out = document.getElementById("result");
  try {
    const r = await fetch(endpoints[p.action](p.value), {
      method: "POST", credentials: "same-origin", headers: { "X-Gatehouse-CSRF": session.csrf_token },
    });
    const body = (await r.text()).trim();
    out.textContent = (r.ok ? "done: " : "refused: ") + p.action + " " + p.value + ": " + body;
    out.className = r.ok ? "good" : "bad";
  } catch (e) {
    out.textContent = p.action + " " + p.value + " failed: " + e;
    out.className = "bad";
  }
  refresh();
}

function feedState(f) {
  if (f.quarantined_serial) return ["quarantined (serial " + f.quarantined_serial + ")", "warn"];
  if (f.last_error) return ["refused: " + f.last_error, "bad"];
  if (f.problem) return ["problem: " + f.problem, "bad"];
  if (f.verified && !f.expired) return ["applied", "good"];
  if (f.expired) return ["expired", "bad"];
  return ["not verified", "bad"];
}

// parseSeries splits a counter name like name{a="b",c="d"}.
function parseSeries(s) {
  const i = s.indexOf("{");
  const labels = {};
  if (i < 0) return { name: s, labels };
  const re = /([a-z_]+)="((?:[^"\\]|\\.)*)"/g;
  let m;
  while ((m = re.exec(s.slice(i))) !== null) labels[m[1]] = m[2];
  return { name: s.slice(0, i), labels };
}

// nftPass are the nftables counters of packets let through.
const nftPass = new Set(["loopback", "established", "icmp_allowed", "admitted", "management", "syn_proxy",
  "fwd_admitted", "fwd_established", "fwd_internal", "fwd_loopback", "fwd_icmp_allowed", "fwd_management"]);

function render(st) {
  const who = document.getElementById("who");
  who.textContent = session.principal + " — " + (session.grants.join(", ") || "no grant");
  const summary = document.getElementById("summary");
  summary.textContent = "generation " + st.generation + ", " + (st.ready ? "ready" : "not ready") + ", role " + st.role +
    ", XDP " + st.xdp_mode + ", nftables " + (st.nftables ? "on" : "off") + ", version " + st.version;
  summary.className = st.ready ? "" : "bad";
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString() + ", every " + refreshMs / 1000 + " s";

  const tenants = [];
  (st.tenants || []).forEach(t => {
    const scope = "tenant:" + t.id;
    tenants.push([t.id, "(all)", t.sessions,
      buttons(button("Drain", "sessions_drain", "scope", scope), button("Kill", "sessions_kill", "scope", scope))]);
    (t.environments || []).forEach(e => {
      const es = scope + "/" + e.name;
      tenants.push([t.id, e.name, e.sessions,
        buttons(button("Drain", "sessions_drain", "scope", es), button("Kill", "sessions_kill", "scope", es))]);
    });
  });
  fill("tenants", ["tenant", "environment", "live sessions", "actions"], tenants, "no tenant in view");

  fill("routes", ["listener", "listen", "protocol", "tenant", "environment", "host / path", "backends"],
    (st.listeners || []).map(r => {
      const bs = el("span");
      (r.backends || []).forEach((b, i) => {
        const h = r.backend_health ? r.backend_health[i] : "";
        bs.appendChild(el("div", b + (h ? " (" + h + ")" : ""), h === "down" ? "bad" : (h === "up" ? "good" : "")));
      });
      return [r.listener, r.listen, r.protocol + (r.start_tls ? " (STARTTLS)" : ""), r.tenant, r.environment || "",
        (r.host || "*") + (r.path || ""), bs];
    }), "no route in view");

  fill("feeds", ["feed", "serial", "age", "state", "last result", "actions"],
    (st.feeds || []).map(f => {
      const [text, cls] = feedState(f);
      return [f.name, f.serial, age(f.last_success), el("span", text, cls), f.last_result || "",
        buttons(button("Accept quarantined release of", "feed_accept", "feed", f.name))];
    }), "no feed in view");

  const drops = [];
  (st.counters || []).forEach(c => {
    const s = parseSeries(c.name);
    if (s.name === "gatehouse_xdp_packets_total" && s.labels.action === "drop") drops.push(["XDP", s.labels.reason, c.value]);
    if (s.name === "gatehouse_nft_packets_total" && !nftPass.has(s.labels.rule)) drops.push(["nftables", s.labels.rule, c.value]);
  });
  fill("drops", ["layer", "reason", "packets"], drops, "no drops in view");

  fill("certs", ["kind", "name", "expires", "in"],
    (st.certificates || []).slice(0, 10).map(c => {
      const days = Math.floor((Date.parse(c.expires) - Date.now()) / 86400000);
      return [c.kind, c.name, c.expires, el("span", days + " days", days < 0 ? "bad" : (days < 30 ? "warn" : ""))];
    }), "no certificate in view");

  fill("refusals", ["time", "listener", "source", "result", "tenant", "reason", "subject"],
    (st.refusals || []).slice(0, 20).map(r => [r.time, r.listener, r.source, r.result, r.tenant || "", r.reason, r.subject || ""]),
    "no refusal in view");
  document.body.dataset.loaded = "1";
}

async function refresh() {
  try {
    const [sr, tr] = await Promise.all([fetch("/ui/session"), fetch("/status")]);
    if (!sr.ok || !tr.ok) throw new Error("HTTP " + (sr.ok ? tr.status : sr.status) + ": " + (await (sr.ok ? tr : sr).text()).trim());
    session = await sr.json();
    render(await tr.json());
  } catch (e) {
    const out = document.getElementById("updated");
    out.textContent = "refresh failed: " + e;
    out.className = "bad";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("confirm-yes").addEventListener("click", confirmed);
  document.getElementById("confirm-no").addEventListener("click", () => {
    pending = null;
    document.getElementById("confirm").hidden = true;
  });
  refresh();
  setInterval(refresh, refreshMs);
});
