// Calls to Vigil's JSON API with the token the user typed in, and the live readings stream.
//
// The token lives in this tab's sessionStorage (the key /docs uses too), never in a URL or a
// cookie: every call sends it as "Authorization: Bearer <token>".
//
// Server-sent events: EventSource cannot send an Authorization header, and the alternative,
// a token in the query string, would end in access logs and browser history. A short-lived
// ticket would need server state the API does not keep. So the stream is read with fetch()
// and a ReadableStream, which sends the same header as every other call, and is parsed here
// (the text/event-stream format: "event:" and "data:" lines, a blank line ends an event).
"use strict";

const KEY = "vigil-token";

export function token() {
  return sessionStorage.getItem(KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

/** An error answer of the API: status and its problem document (RFC 9457). */
export class ApiError extends Error {
  constructor(status, problem, text) {
    super((problem && problem.detail) || text || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

const listeners = {unauthorized: []};

/** Called with no argument when the API refuses the token (401). */
export function onUnauthorized(fn) {
  listeners.unauthorized.push(fn);
}

function headers(extra) {
  return {Authorization: `Bearer ${token()}`, ...extra};
}

/** ``method`` ``path`` with an optional JSON ``body``: the decoded answer, null for 204. */
export async function api(path, {method = "GET", body, signal} = {}) {
  const init = {method, headers: headers({Accept: "application/json"}), cache: "no-store", signal};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    data = null;
  }
  if (!resp.ok) {
    if (resp.status === 401) for (const fn of listeners.unauthorized) fn();
    throw new ApiError(resp.status, data, text);
  }
  return data;
}

/** Read the server-sent events of ``path`` until the server ends the stream; calls
 * ``onEvent("open", null)`` once connected, then ``onEvent(name, data)`` for each event
 * (data parsed as JSON). Rejects on an error answer,
 * a lost connection, or ``signal`` aborting. */
export async function stream(path, onEvent, signal) {
  const resp = await fetch(path, {
    headers: headers({Accept: "text/event-stream"}),
    cache: "no-store",
    signal,
  });
  if (!resp.ok) {
    let problem = null;
    try {
      problem = await resp.json();
    } catch (e) {
      problem = null;
    }
    if (resp.status === 401) for (const fn of listeners.unauthorized) fn();
    throw new ApiError(resp.status, problem, "");
  }
  onEvent("open", null);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // a comment: keepalive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") name = val;
        else if (field === "data") data.push(val);
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

export const enc = encodeURIComponent;
