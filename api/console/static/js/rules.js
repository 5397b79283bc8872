// Rules: every rule the caller owns (an admin: every rule), created, edited (PUT, the whole
// rule), enabled or disabled (PATCH) and deleted through /rules. The form shows the fields of
// the kind chosen; the API validates and its problem's detail is shown as it is.
"use strict";

import {ApiError, api, enc} from "./api.js";
import {badge, el, flash, fmtNumber, table} from "./dom.js";

const KINDS = {
  threshold: ["op", "threshold", "clear", "for_s"],
  band: ["low", "high", "for_s"],
  change: ["percent", "window_s", "direction"],
  nodata: ["for_s"],
  offline: ["for_s"],
};
const NUMBERS = new Set(["threshold", "clear", "for_s", "low", "high", "percent", "window_s"]);

function condition(r) {
  const held = r.for_s ? ` for ${fmtNumber(r.for_s)} s` : "";
  if (r.kind === "threshold") {
    const clear = r.clear === null || r.clear === undefined ? "" : ` (clears at ${fmtNumber(r.clear)})`;
    return `${r.op} ${fmtNumber(r.threshold)}${clear}${held}`;
  }
  if (r.kind === "band") return `outside ${fmtNumber(r.low)}..${fmtNumber(r.high)}${held}`;
  if (r.kind === "change") return `${r.direction} ${fmtNumber(r.percent)} % within ${fmtNumber(r.window_s)} s`;
  if (r.kind === "nodata") return `no reading${held}`;
  return `offline${held}`;
}

function field(name, label, input, kinds) {
  return el("label", {"data-field": name, "data-kinds": kinds ? kinds.join(" ") : null}, label, input);
}

function choice(name, values, value) {
  const s = el("select", {name, id: `rule-${name}`});
  for (const v of values) s.append(el("option", {value: v, selected: v === value}, v));
  return s;
}

function input(name, attrs) {
  return el("input", {name, id: `rule-${name}`, ...(attrs || {})});
}

function buildForm(admin) {
  const kindsOf = (f) => Object.keys(KINDS).filter((k) => KINDS[k].includes(f));
  return el(
    "form",
    {class: "rule", id: "rule-form", novalidate: true},
    field("id", "Id", input("id", {placeholder: "too-hot", spellcheck: "false"})),
    field("name", "Name", input("name", {placeholder: "Too hot"})),
    field("kind", "Kind", choice("kind", Object.keys(KINDS), "threshold")),
    field("device", "Device (id or pattern; empty: all)", input("device", {placeholder: "dev-1 or greenhouse-*"})),
    field("symbol", "Symbol (instead of a device)", input("symbol", {placeholder: "AAPL"})),
    field("metric", "Metric", input("metric", {placeholder: "temperature"})),
    field("op", "Fires when", choice("op", ["above", "below"], "above"), kindsOf("op")),
    field("threshold", "Threshold", input("threshold", {type: "number", step: "any"}), kindsOf("threshold")),
    field("clear", "Clears at (hysteresis)", input("clear", {type: "number", step: "any"}), kindsOf("clear")),
    field("low", "Low", input("low", {type: "number", step: "any"}), kindsOf("low")),
    field("high", "High", input("high", {type: "number", step: "any"}), kindsOf("high")),
    field("percent", "Change (%)", input("percent", {type: "number", step: "any"}), kindsOf("percent")),
    field("window_s", "Window (s)", input("window_s", {type: "number", step: "any"}), kindsOf("window_s")),
    field("direction", "Direction", choice("direction", ["any", "rise", "fall"], "any"), kindsOf("direction")),
    field("for_s", "For (s)", input("for_s", {type: "number", step: "any", min: "0"}), kindsOf("for_s")),
    field("severity", "Severity", choice("severity", ["info", "warning", "critical"], "warning")),
    admin ? field("owner", "Owner (admin: for a user)", input("owner", {placeholder: "you"})) : null,
    field("enabled", "Enabled", input("enabled", {type: "checkbox", checked: true})),
    el(
      "div",
      {class: "actions"},
      el("button", {type: "submit", class: "primary", id: "rule-save"}, "Create rule"),
      el("button", {type: "button", id: "rule-cancel", hidden: true}, "Cancel"),
      el("span", {class: "error", id: "rule-error", role: "alert"}),
    ),
  );
}

function showKind(form) {
  const kind = form.elements.kind.value;
  for (const label of form.querySelectorAll("[data-kinds]")) label.hidden = !label.dataset.kinds.split(" ").includes(kind);
  form.querySelector('[data-field="metric"]').hidden = kind === "offline";
}

function body(form, editing) {
  const f = form.elements;
  const kind = f.kind.value;
  const out = {kind, severity: f.severity.value, enabled: f.enabled.checked};
  for (const name of ["id", "name", "device", "symbol", "metric", ...(editing ? [] : ["owner"])]) {
    if (!f[name] || (editing && name === "id")) continue;
    if (name === "metric" && kind === "offline") continue;
    const v = f[name].value.trim();
    if (v) out[name] = v;
  }
  for (const name of KINDS[kind]) {
    const v = f[name].value.trim();
    if (!v) continue;
    out[name] = NUMBERS.has(name) ? Number(v) : v;
  }
  return out;
}

function fill(form, rule) {
  const f = form.elements;
  form.reset();
  for (const [k, v] of Object.entries(rule)) {
    if (!f[k] || k === "owner") continue;
    if (f[k].type === "checkbox") f[k].checked = Boolean(v);
    else f[k].value = v === null || v === undefined ? "" : String(v);
  }
  f.id.disabled = true;
  if (f.owner) f.owner.disabled = true;
  showKind(form);
}

export async function render(ctx) {
  const admin = ctx.who.role === "admin";
  const list = el("div", {id: "rule-list"});
  const form = buildForm(admin);
  const formTitle = el("h3", {id: "rule-form-title"}, "New rule");
  ctx.view.append(el("h2", {}, "Rules"), el("div", {class: "card"}, list), el("div", {class: "card"}, formTitle, form));
  let editing = null;
  const error = form.querySelector("#rule-error");

  function stopEditing() {
    editing = null;
    form.reset();
    form.elements.id.disabled = false;
    if (form.elements.owner) form.elements.owner.disabled = false;
    formTitle.textContent = "New rule";
    form.querySelector("#rule-save").textContent = "Create rule";
    form.querySelector("#rule-cancel").hidden = true;
    error.textContent = "";
    showKind(form);
  }

  function edit(rule) {
    editing = rule.id;
    fill(form, rule);
    formTitle.textContent = `Edit rule ${rule.id}`;
    form.querySelector("#rule-save").textContent = "Save rule";
    form.querySelector("#rule-cancel").hidden = false;
    error.textContent = "";
    form.scrollIntoView();
  }

  async function remove(rule, button) {
    if (button.dataset.confirm !== "1") {
      button.dataset.confirm = "1";
      button.textContent = "Really delete?";
      return;
    }
    button.disabled = true;
    await api(`/rules/${enc(rule.id)}`, {method: "DELETE"});
    if (editing === rule.id) stopEditing();
    flash(`Rule ${rule.id} deleted.`);
    await refresh();
  }

  async function toggle(rule, box) {
    box.disabled = true;
    await api(`/rules/${enc(rule.id)}`, {method: "PATCH", body: {enabled: box.checked}});
    await refresh();
  }

  async function refresh() {
    const data = await api("/rules", {signal: ctx.signal});
    const head = ["Id", "Name", "Kind", "Watches", "When", "Severity", "Enabled", ...(admin ? ["Owner"] : []), ""];
    const rows = data.rules.map((r) =>
      el(
        "tr",
        {"data-rule": r.id},
        el("td", {class: "mono"}, r.id),
        el("td", {}, r.name),
        el("td", {}, r.kind),
        el("td", {class: "mono"}, `${r.symbol || r.device || "every device"} · ${r.metric}`),
        el("td", {}, condition(r)),
        el("td", {}, badge(r.severity)),
        el("td", {}, el("input", {type: "checkbox", class: "enabled", checked: r.enabled, onchange: (ev) => toggle(r, ev.target).catch(ctx.report)})),
        admin ? el("td", {}, r.owner || "") : null,
        el(
          "td",
          {},
          el("button", {type: "button", class: "edit", onclick: () => edit(r)}, "Edit"),
          " ",
          el("button", {type: "button", class: "danger delete", onclick: (ev) => remove(r, ev.target).catch(ctx.report)}, "Delete"),
        ),
      ),
    );
    const bad = data.invalid.map((b) => [el("td", {class: "mono"}, b.id), el("td", {colspan: head.length - 1, class: "error"}, `stored row is not a valid rule: ${b.reason}`)]);
    list.replaceChildren(
      el("p", {class: "muted"}, `Rule set version ${data.version}, ${data.pushed ? "delivered to the broker" : "not yet delivered to the broker"}.`),
      table(head, [...rows, ...bad.map((cells) => el("tr", {}, cells))], "no rules yet"),
    );
  }

  form.elements.kind.addEventListener("change", () => showKind(form));
  form.querySelector("#rule-cancel").addEventListener("click", stopEditing);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    const wanted = body(form, editing !== null);
    const call = editing === null ? api("/rules", {method: "POST", body: wanted}) : api(`/rules/${enc(editing)}`, {method: "PUT", body: wanted});
    call
      .then(async (answer) => {
        flash(`Rule ${answer.rule.id} ${editing === null ? "created" : "saved"}${answer.pushed ? "" : " (the broker has not acknowledged it yet)"}.`);
        stopEditing();
        await refresh();
      })
      .catch((err) => {
        error.textContent = err.message;
        if (!(err instanceof ApiError)) ctx.report(err);
      });
  });
  showKind(form);
  await ctx.every(10000, refresh);
  ctx.loaded();
}
