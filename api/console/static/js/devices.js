// Devices: each one's status and when it was last seen (refreshed every 5 s), and for the
// device chosen a live chart of any of its metrics: the stored history first, then every new
// reading as the API's stream sends it (see api.js: fetch() streaming with the token).
"use strict";

import {ApiError, api, enc, stream} from "./api.js";
import {SeriesChart} from "./chart.js";
import {ago, badge, el, fmtNumber, fmtTime, sleep, table} from "./dom.js";

const HISTORY = 500;

function row(d, selected) {
  const status = d.status;
  const state = status ? status.state : "unknown";
  return el(
    "tr",
    {class: d.id === selected ? "selected" : null, "data-device": d.id},
    el("td", {}, el("a", {href: `#/devices/${enc(d.id)}`, class: "mono"}, d.id)),
    el("td", {}, d.description || ""),
    el("td", {}, d.owner || "—"),
    el("td", {}, badge(state, state), d.disabled ? " " : null, d.disabled ? badge("disabled", "offline") : null),
    el("td", {title: status ? fmtTime(status.ts) : ""}, status ? ago(status.ts) : "never"),
  );
}

export async function render(ctx) {
  const [selected, metric] = ctx.params;
  const list = el("div", {id: "device-list"});
  const panel = el("div", {id: "device-panel"});
  ctx.view.append(el("h2", {}, "Devices"), el("div", {class: "card"}, list), panel);
  let devices = [];
  await ctx.every(5000, async () => {
    devices = (await api("/devices", {signal: ctx.signal})).devices;
    list.replaceChildren(table(["Device", "Description", "Owner", "Status", "Last seen"], devices.map((d) => row(d, selected)), "no devices"));
  });
  if (selected) await showDevice(ctx, panel, devices.find((d) => d.id === selected), selected, metric);
  ctx.loaded();
}

async function showDevice(ctx, panel, device, id, wanted) {
  const card = el("div", {class: "card", id: "device"});
  panel.append(card);
  const status = device && device.status;
  card.append(
    el("h3", {}, "Device ", el("span", {class: "mono"}, id)),
    el(
      "dl",
      {class: "facts"},
      el("dt", {}, "Status"),
      el("dd", {}, status ? `${status.state} since ${fmtTime(status.ts)}${status.reason ? ` (${status.reason})` : ""}` : "no status published yet"),
      el("dt", {}, "Owner"),
      el("dd", {}, (device && device.owner) || "—"),
      el("dt", {}, "Live configuration"),
      el("dd", {}, device && device.config_version ? `version ${device.config_version}` : "none (the agent's own file)"),
    ),
  );
  let metrics = [];
  try {
    metrics = (await api(`/devices/${enc(id)}/metrics`, {signal: ctx.signal})).metrics;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err;
  }
  if (!metrics.length) {
    card.append(el("p", {class: "muted", id: "no-metrics"}, "No readings stored for this device yet."));
    return;
  }
  const metric = metrics.includes(wanted) ? wanted : metrics[0];
  if (metric !== wanted) history.replaceState(null, "", `#/devices/${enc(id)}/${enc(metric)}`);
  const select = el("select", {id: "metric", onchange: (ev) => (location.hash = `#/devices/${enc(id)}/${enc(ev.target.value)}`)});
  for (const m of metrics) select.append(el("option", {value: m, selected: m === metric}, m));
  const latest = el("span", {class: "latest", id: "latest"}, "—");
  const latestAt = el("span", {class: "muted", id: "latest-at"});
  const live = el("span", {class: "live", id: "live"}, "connecting…");
  const box = el("div", {class: "chart", id: "chart"});
  card.append(el("div", {class: "chart-head"}, el("label", {}, "Metric ", select), latest, latestAt, el("span", {class: "grow"}), live), box);

  const chart = new SeriesChart(box, metric);
  ctx.signal.addEventListener("abort", () => chart.destroy(), {once: true});
  const showLatest = () => {
    const last = chart.latest;
    if (!last) return;
    latest.textContent = fmtNumber(last.value);
    latestAt.textContent = `at ${fmtTime(last.ts)}`;
  };
  const past = await api(`/devices/${enc(id)}/metrics/${enc(metric)}/history?limit=${HISTORY}`, {signal: ctx.signal});
  chart.add(past.points.slice().reverse());
  showLatest();
  follow(ctx, id, metric, chart, live, showLatest);
}

/** Keep ``chart`` up to date from the stream, reconnecting from the newest time it has. */
async function follow(ctx, device, metric, chart, live, showLatest) {
  let since = Number.isFinite(chart.lastTs) ? chart.lastTs : 0;
  let delay = 0;
  while (!ctx.signal.aborted) {
    let wait = 250; // after the server ended a stream (every minute): reconnect at once
    try {
      await stream(
        `/devices/${enc(device)}/metrics/${enc(metric)}/stream?since=${since}`,
        (name, data) => {
          if (name === "open") {
            live.textContent = "live";
            live.classList.add("on");
          } else if (name === "points") {
            since = chart.add(data.points);
            showLatest();
          } else if (name === "end") {
            since = Math.max(since, data.since);
          } else if (name === "problem") {
            live.textContent = `live (${data.detail})`;
          } else if (name === "busy") {
            wait = 5000;
          }
        },
        ctx.signal,
      );
      delay = 0;
    } catch (err) {
      if (ctx.signal.aborted || (err instanceof ApiError && [401, 403, 404].includes(err.status))) {
        if (!ctx.signal.aborted) live.textContent = err.message;
        return;
      }
      delay = Math.min(Math.max(delay * 2, 1000), 10000);
      wait = delay;
      live.classList.remove("on");
      live.textContent = `reconnecting (${err.message})`;
    }
    await sleep(wait, ctx.signal);
  }
}
