// Small DOM and formatting helpers. Text is always set as text (never as HTML).
"use strict";

/** ``el("td", {class: "num"}, "1.5")``: an element with attributes and children; a child
 * that is a string becomes a text node, null and undefined are left out. Attributes whose
 * name starts with "on" are listeners ({onclick: fn}). */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function badge(text, kind) {
  return el("span", {class: `badge ${kind || text}`}, text);
}

/** A table with a header row; ``rows`` are arrays of cells (or <tr> elements); ``empty``
 * is the text of the one row of an empty table. */
export function table(head, rows, empty, attrs) {
  const body = rows.length
    ? rows.map((r) => (r instanceof Node ? r : el("tr", {}, r.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))))))
    : [el("tr", {class: "empty"}, el("td", {colspan: head.length}, empty || "none"))];
  return el("table", attrs || {}, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))), el("tbody", {}, body));
}

export function num(value, attrs) {
  return el("td", {class: "num", ...(attrs || {})}, value === null || value === undefined ? "—" : fmtNumber(value));
}

export function fmtNumber(value) {
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? String(value) : String(Math.round(value * 1000) / 1000);
}

export function fmtTime(ms) {
  if (ms === null || ms === undefined) return "—";
  return new Date(ms).toLocaleString();
}

export function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.round((Date.now() - ms) / 1000);
  if (Math.abs(s) < 60) return `${s} s ago`;
  if (Math.abs(s) < 3600) return `${Math.round(s / 60)} min ago`;
  if (Math.abs(s) < 86400) return `${Math.round(s / 3600)} h ago`;
  return fmtTime(ms);
}

export function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${Math.round(n * 10) / 10} ${units[i]}`;
}

/** Show a message above the page for a while (``bad``: an error). */
export function flash(message, bad) {
  const box = document.getElementById("flash");
  box.textContent = message;
  box.classList.toggle("bad", Boolean(bad));
  box.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => {
    box.hidden = true;
  }, 6000);
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, {once: true});
  });
}
