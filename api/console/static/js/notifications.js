// Notifications: every delivery the notifier recorded for the caller (an admin: everyone's),
// the newest first, with its channel, target, state and the alerts it carried; every 5 s.
"use strict";

import {api} from "./api.js";
import {ago, badge, el, fmtTime, table} from "./dom.js";

export async function render(ctx) {
  const admin = ctx.who.role === "admin";
  const list = el("div", {id: "notification-list"});
  ctx.view.append(el("h2", {}, "Notifications"), el("div", {class: "card"}, list));
  await ctx.every(5000, async () => {
    const data = await api("/notifications?limit=200", {signal: ctx.signal});
    const head = ["When", ...(admin ? ["Owner"] : []), "Channel", "To", "State", "Attempts", "Alerts"];
    const rows = data.notifications.map((n) =>
      el(
        "tr",
        {"data-notification": n.id},
        el("td", {title: fmtTime(n.created_at)}, ago(n.created_at)),
        admin ? el("td", {}, n.owner) : null,
        el("td", {}, n.channel, n.repeat ? " (repeat)" : ""),
        el("td", {class: "mono"}, n.target),
        el("td", {}, badge(n.state), n.reason ? el("div", {class: "muted"}, n.reason) : null),
        el("td", {class: "num"}, String(n.attempts)),
        el("td", {}, n.alerts.map((a) => el("div", {}, badge(a.state, a.state === "firing" ? a.severity : "done"), " ", a.summary || `${a.rule_id} on ${a.device}`))),
      ),
    );
    list.replaceChildren(
      el("p", {class: "muted"}, `${data.total} notification(s).`),
      table(head, rows, "no notifications yet"),
    );
  });
  ctx.loaded();
}
