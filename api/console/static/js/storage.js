// Storage (an admin's page, as every /storage route is): the layout, every server with its
// state, share of the ring and the hints queued for it, the automatic repair, and the
// progress of a storage job (repair now, or a rebalance started here or elsewhere) from
// GET /storage/jobs/<id>. Refreshed every 3 s.
"use strict";

import {ApiError, api} from "./api.js";
import {ago, badge, bytes, el, fmtTime, num, table} from "./dom.js";

const JOB = "vigil-console-storage-job";

/** A job's result in a line: its counts (the rest is in GET /storage/jobs/<id>). */
function summary(result) {
  const parts = [];
  for (const [k, v] of Object.entries(result)) {
    if (typeof v === "number") parts.push(`${k.replace(/_/g, " ")} ${Math.round(v * 100) / 100}`);
    else if (v && typeof v === "object" && !Array.isArray(v) && Object.values(v).every((x) => typeof x === "number")) {
      parts.push(`${k.replace(/_/g, " ")} ${Object.values(v).reduce((x, y) => x + y, 0)}`);
    }
  }
  return parts.join(", ");
}

function jobView(job) {
  if (!job) return el("p", {class: "muted"}, "No storage job started from this tab.");
  const p = job.progress;
  const bar = el("progress", {max: String(p.total || 1), value: String(p.total ? p.done : job.state === "running" ? 0 : 1)});
  return el(
    "div",
    {id: "job", "data-state": job.state},
    el("p", {}, `Job ${job.id} (${job.kind}) `, badge(job.state), ` ${p.phase}: ${p.done}/${p.total} `, bar),
    job.error ? el("p", {class: "error"}, job.error) : null,
    job.result ? el("p", {class: "mono"}, summary(job.result)) : null,
    job.finished_ms ? el("p", {class: "muted"}, `finished ${fmtTime(job.finished_ms)}`) : null,
  );
}

export async function render(ctx) {
  ctx.view.append(el("h2", {}, "Storage"));
  if (ctx.who.role !== "admin") {
    ctx.view.append(el("div", {class: "card", id: "storage-admin-only"}, el("p", {}, "Storage operations are an admin's: log in with an admin token to see the servers.")));
    ctx.loaded();
    return;
  }
  const layout = el("div", {id: "layout"});
  const servers = el("div", {id: "servers"});
  const repair = el("div", {id: "auto-repair"});
  const jobBox = el("div", {id: "job-box"});
  const start = el("button", {type: "button", class: "primary", id: "repair-now"}, "Repair now");
  ctx.view.append(
    el("div", {class: "card"}, layout),
    el("div", {class: "card"}, el("h3", {}, "Servers"), servers),
    el("div", {class: "card"}, el("h3", {}, "Repair and rebalance"), repair, el("div", {class: "row"}, start), jobBox),
  );

  async function follow(url) {
    sessionStorage.setItem(JOB, url);
    await refresh();
  }

  start.addEventListener("click", () => {
    start.disabled = true;
    api("/storage/repair", {method: "POST"})
      .then((job) => follow(`/storage/jobs/${job.id}`))
      .catch((err) => {
        if (err instanceof ApiError && err.status === 409 && err.problem.job) return follow(err.problem.job);
        throw err;
      })
      .catch(ctx.report)
      .finally(() => {
        start.disabled = false;
      });
  });

  async function refresh() {
    const s = await api("/storage", {signal: ctx.signal});
    layout.replaceChildren(
      el(
        "dl",
        {class: "facts"},
        el("dt", {}, "Layout"),
        el("dd", {}, `version ${s.layout_version}, strategy ${s.strategy}, ${s.replication_factor} replicas per series`),
        el("dt", {}, "Rebalance"),
        el("dd", {id: "moving"}, s.moving ? "moving series to their new servers" : "none running"),
        el("dt", {}, "Writers"),
        el("dd", {}, s.writers.length ? s.writers.map((w) => `${w.dir} (layout ${w.layout_version ?? "?"})`).join(", ") : "none seen"),
      ),
    );
    servers.replaceChildren(
      table(
        ["Server", "URL", "State", "Layout", "Share", "Hints (points)", "Hints (bytes)", "Oldest hint", "Last seen"],
        s.servers.map((n) =>
          el(
            "tr",
            {"data-server": n.name},
            el("td", {class: "mono"}, n.name),
            el("td", {class: "mono"}, n.url),
            el("td", {}, badge(n.state, n.up ? "up" : "down"), n.reason ? el("div", {class: "muted"}, n.reason) : null),
            el("td", {}, n.layout_state),
            num(`${Math.round(n.share * 1000) / 10} %`),
            num(n.hints ? n.hints.points : 0),
            el("td", {class: "num"}, bytes(n.hints ? n.hints.bytes : 0)),
            el("td", {class: "num"}, n.hints && n.hints.oldest_age_s ? `${Math.round(n.hints.oldest_age_s)} s` : "—"),
            el("td", {title: fmtTime(n.last_seen_ms)}, ago(n.last_seen_ms)),
          ),
        ),
        "no servers",
      ),
    );
    const a = s.auto_repair;
    const last = a.last;
    repair.replaceChildren(
      el(
        "p",
        {},
        a.interval_s ? `Automatic repair every ${a.interval_s} s: ${a.runs} run(s), ${a.failures} with errors.` : "Automatic repair is off.",
        last ? ` Last: ${ago(last.finished_ms)}, ${last.series} series, ${Object.values(last.copied || {}).reduce((x, y) => x + y, 0)} point(s) copied.` : "",
      ),
    );
    const url = sessionStorage.getItem(JOB);
    let job = null;
    if (url) {
      try {
        job = await api(url, {signal: ctx.signal});
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 404)) throw err;
        sessionStorage.removeItem(JOB); // the API restarted: its jobs are gone
      }
    }
    jobBox.replaceChildren(jobView(job));
  }

  await ctx.every(3000, refresh);
  ctx.loaded();
}
