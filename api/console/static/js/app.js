// The console's shell: log in with a token, then one page at a time by the URL's hash
// (#/devices, #/devices/<id>/<metric>, #/alerts, #/rules, #/notifications, #/storage).
// Each page's module exports render(ctx); leaving the page aborts ctx.signal, which stops its
// timers and its live stream.
"use strict";

import {ApiError, api, onUnauthorized, setToken, token} from "./api.js";
import {flash} from "./dom.js";
import * as alerts from "./alerts.js";
import * as devices from "./devices.js";
import * as notifications from "./notifications.js";
import * as rules from "./rules.js";
import * as storage from "./storage.js";

const PAGES = {devices, alerts, rules, notifications, storage};
const $ = (id) => document.getElementById(id);
let who = null;
let current = null;

function showLogin(message) {
  who = null;
  if (current) current.abort();
  $("view").replaceChildren();
  $("nav").hidden = $("whoami").hidden = $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

async function start() {
  if (!token()) {
    showLogin();
    return;
  }
  try {
    who = await api("/me");
  } catch (err) {
    setToken("");
    showLogin(err instanceof ApiError && err.status === 401 ? "That token is not valid." : err.message);
    return;
  }
  $("login").hidden = true;
  $("nav").hidden = $("whoami").hidden = $("logout").hidden = false;
  $("whoami").textContent = `${who.name} (${who.role})`;
  route();
}

/** Run ``fn`` now and every ``ms`` until the page is left; errors show above the page. */
function every(signal, ms, fn) {
  let running = false;
  const tick = async () => {
    if (running || signal.aborted) return;
    running = true;
    try {
      await fn();
    } catch (err) {
      report(err);
    } finally {
      running = false;
    }
  };
  const timer = setInterval(tick, ms);
  signal.addEventListener("abort", () => clearInterval(timer), {once: true});
  return tick();
}

function report(err) {
  if (err && err.name === "AbortError") return;
  if (err instanceof ApiError) {
    if (err.status !== 401) flash(err.message, true);
    return;
  }
  flash(String(err), true);
  console.error(err); // a bug of the console itself: the tests fail on it
}

function route() {
  if (!who) return;
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const name = parts[0] in PAGES ? parts[0] : "devices";
  if (!(parts[0] in PAGES)) {
    history.replaceState(null, "", "#/devices");
  }
  if (current) current.abort();
  current = new AbortController();
  $("flash").hidden = true;
  const view = $("view");
  view.replaceChildren();
  view.dataset.page = name;
  delete view.dataset.loaded;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  const signal = current.signal;
  const ctx = {
    view,
    who,
    params: parts.slice(1),
    signal,
    every: (ms, fn) => every(signal, ms, fn),
    loaded: () => {
      if (!signal.aborted) view.dataset.loaded = "1";
    },
    report,
  };
  PAGES[name].render(ctx).catch(report);
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  setToken($("token").value.trim());
  start();
});
$("logout").addEventListener("click", () => {
  setToken("");
  showLogin("Logged out.");
});
onUnauthorized(() => {
  setToken("");
  showLogin("The API refused the token (revoked?): log in again.");
});
window.addEventListener("hashchange", route);
start();
