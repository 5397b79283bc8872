// Alerts: what fires now (GET /alerts), with a "Silence 1 h" action (POST /silences matching
// its device and rule); what resolved; and the silences, each of which can be expired.
//
// The API keeps firing alerts only (the retained firing/ states). Resolved ones come from two
// places: the delivery records (GET /notifications: each resolved transition the notifier
// sent), and alerts this tab saw firing that stopped (kept in sessionStorage; marked
// "seen here", with the time the tab noticed).
"use strict";

import {api, enc} from "./api.js";
import {ago, badge, el, flash, fmtNumber, fmtTime, table} from "./dom.js";

const SEEN = "vigil-console-firing";
const RESOLVED = "vigil-console-resolved";
const KEEP_RESOLVED = 100;
const LABELS = ["device", "rule_id", "severity", "kind", "symbol", "metric"];

function load(key, fallback) {
  try {
    return JSON.parse(sessionStorage.getItem(key)) || fallback;
  } catch (e) {
    return fallback;
  }
}

/** fnmatch-style: * any run, ? one character, [...] a set; matched whole. */
function globMatch(pattern, value) {
  let re = "";
  for (let i = 0; i < pattern.length; i += 1) {
    const c = pattern[i];
    if (c === "*") re += ".*";
    else if (c === "?") re += ".";
    else if (c === "[" && pattern.indexOf("]", i + 2) > 0) {
      const end = pattern.indexOf("]", i + 2);
      let set = pattern.slice(i + 1, end).replace(/\\/g, "\\\\");
      if (set.startsWith("!")) set = "^" + set.slice(1);
      re += `[${set}]`;
      i = end;
    } else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`).test(value == null ? "" : String(value));
}

function silencing(alert, silences) {
  return silences.find(
    (s) => s.state === "active" && Object.entries(s.matchers).every(([k, p]) => LABELS.includes(k) && globMatch(p, alert[k])),
  );
}

/** Alerts this tab saw firing that no longer are: resolved, as far as the tab can tell. */
function track(firing) {
  const seen = load(SEEN, {});
  const resolved = load(RESOLVED, []);
  const now = new Set(firing.map((a) => a.alert_id));
  for (const [id, a] of Object.entries(seen)) {
    if (!now.has(id)) resolved.unshift({...a, state: "resolved", resolved_at: Date.now(), source: "seen here"});
  }
  sessionStorage.setItem(SEEN, JSON.stringify(Object.fromEntries(firing.map((a) => [a.alert_id, a]))));
  sessionStorage.setItem(RESOLVED, JSON.stringify(resolved.slice(0, KEEP_RESOLVED)));
  return resolved;
}

function condition(a) {
  if (a.detail) return a.detail;
  if (a.kind === "threshold") return `${a.metric} ${fmtNumber(a.value)} ${a.op} ${fmtNumber(a.threshold)}`;
  return `${a.metric} ${fmtNumber(a.value)}`;
}

export async function render(ctx) {
  const firingBox = el("div", {id: "firing"});
  const resolvedBox = el("div", {id: "resolved"});
  const silencesBox = el("div", {id: "silences"});
  ctx.view.append(
    el("h2", {}, "Alerts"),
    el("div", {class: "card"}, el("h3", {}, "Firing"), firingBox),
    el("div", {class: "card"}, el("h3", {}, "Resolved"), resolvedBox),
    el("div", {class: "card"}, el("h3", {}, "Silences"), silencesBox),
  );

  async function silence(alert, button) {
    button.disabled = true;
    const body = {
      matchers: {device: alert.device, rule_id: alert.rule_id},
      duration_s: 3600,
      comment: `silenced in the console by ${ctx.who.name}`,
    };
    const made = await api("/silences", {method: "POST", body});
    flash(`Silenced ${alert.rule_id} on ${alert.device} until ${fmtTime(made.ends_at)}.`);
    await refresh();
  }

  async function expire(s, button) {
    button.disabled = true;
    await api(`/silences/${enc(s.id)}`, {method: "DELETE"});
    flash(`Silence ${s.id} expired.`);
    await refresh();
  }

  async function refresh() {
    const [firing, silences, notes] = await Promise.all([
      api("/alerts?limit=1000", {signal: ctx.signal}),
      api("/silences?limit=1000", {signal: ctx.signal}),
      api("/notifications?limit=300", {signal: ctx.signal}),
    ]);
    const current = silences.silences.filter((s) => s.state !== "expired");
    firingBox.replaceChildren(
      table(
        ["Severity", "Rule", "Device", "What", "Since", ""],
        firing.alerts.map((a) => {
          const muted = silencing(a, current);
          const action = muted
            ? badge("silenced", "info")
            : el("button", {type: "button", class: "silence", "data-alert": a.alert_id, onclick: (ev) => silence(a, ev.target).catch(ctx.report)}, "Silence 1 h");
          return el(
            "tr",
            {"data-alert": a.alert_id, "data-rule": a.rule_id, "data-device": a.device},
            el("td", {}, badge(a.severity)),
            el("td", {class: "mono"}, a.rule_id),
            el("td", {class: "mono"}, a.symbol || a.device),
            el("td", {}, condition(a)),
            el("td", {title: fmtTime(a.started_at)}, ago(a.started_at)),
            el("td", {}, action),
          );
        }),
        "nothing fires",
      ),
    );
    const byId = new Map();
    for (const n of notes.notifications) {
      for (const a of n.alerts) {
        if (a.state === "resolved" && !byId.has(a.alert_id)) {
          byId.set(a.alert_id, {...a, resolved_at: n.created_at, source: `notified (${n.channel})`});
        }
      }
    }
    for (const a of track(firing.alerts)) {
      if (!byId.has(a.alert_id)) byId.set(a.alert_id, {...a, summary: condition(a)});
    }
    const resolved = [...byId.values()].sort((x, y) => y.resolved_at - x.resolved_at);
    resolvedBox.replaceChildren(
      table(
        ["Severity", "Rule", "Device", "What", "Resolved", "From"],
        resolved.map((a) =>
          el(
            "tr",
            {"data-alert": a.alert_id, "data-rule": a.rule_id},
            el("td", {}, badge(a.severity)),
            el("td", {class: "mono"}, a.rule_id),
            el("td", {class: "mono"}, a.device),
            el("td", {}, a.summary || ""),
            el("td", {title: fmtTime(a.resolved_at)}, ago(a.resolved_at)),
            el("td", {class: "muted"}, a.source),
          ),
        ),
        "none resolved yet",
      ),
    );
    silencesBox.replaceChildren(
      table(
        ["Matchers", "State", "Until", "Owner", "Comment", ""],
        silences.silences.map((s) =>
          el(
            "tr",
            {"data-silence": s.id},
            el("td", {class: "mono"}, Object.entries(s.matchers).map(([k, v]) => `${k}=${v}`).join(", ")),
            el("td", {}, badge(s.state)),
            el("td", {}, fmtTime(s.ends_at)),
            el("td", {}, s.owner),
            el("td", {}, s.comment),
            el("td", {}, s.state === "expired" ? null : el("button", {type: "button", onclick: (ev) => expire(s, ev.target).catch(ctx.report)}, "Expire")),
          ),
        ),
        "no silences",
      ),
    );
  }

  await ctx.every(2000, refresh);
  ctx.loaded();
}
