"""``GET /openapi.json`` (public): an OpenAPI 3.1 document of every route, generated at
start from the app itself: the paths and methods from the URL map, each operation's summary
and description from its view's docstring, the request bodies from the Structs that
validate them (:mod:`api.schemas`, JSON Schema by msgspec; the devices' pydantic models by
pydantic), errors as problem+json. ``GET /docs`` (public) is a page that reads it and lets
you try each operation with your token; it needs nothing but the API (no CDN, no build).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import msgspec
from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.routing import Rule

from api.auth import PUBLIC_PATHS
from api.schemas import body_of
from api.validation import reject_args
from vigil import __version__

bp = Blueprint("openapi", __name__)

MUTATIONS = ("POST", "PUT", "PATCH", "DELETE")
_ARG = re.compile(r"<(?:(?P<conv>[^:<>]+):)?(?P<name>[^<>]+)>")
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; 401s carry WWW-Authenticate: Bearer (RFC 6750)",
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "what is wrong, naming the key or value"},
        "instance": {"type": "string"},
        "parameter": {"type": "string", "description": "the query or path parameter at fault"},
    },
    "required": ["type", "title", "status", "detail"],
}


def _path(rule: Rule) -> str:
    return _ARG.sub(lambda m: "{" + m["name"] + "}", rule.rule)


def _parameters(rule: Rule) -> list[dict[str, Any]]:
    out = []
    for m in _ARG.finditer(rule.rule):
        kind = "integer" if m["conv"] == "int" else "string"
        out.append({"name": m["name"], "in": "path", "required": True, "schema": {"type": kind}})
    return out


def _schemas(app: Flask) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``{endpoint: {"$ref": ...}}`` of every declared body, and the components."""
    declared = {
        endpoint: schema
        for endpoint, view in app.view_functions.items()
        if (schema := body_of(view)) is not None
    }
    structs = sorted(
        {s for s in declared.values() if issubclass(s, msgspec.Struct)}, key=lambda s: s.__name__
    )
    refs, components = msgspec.json.schema_components(
        structs, ref_template="#/components/schemas/{name}"
    )
    by_struct = dict(zip(structs, refs, strict=True))
    out: dict[str, dict[str, Any]] = {}
    for endpoint, schema in declared.items():
        if schema in by_struct:
            out[endpoint] = by_struct[schema]
        else:  # a pydantic model
            components[schema.__name__] = schema.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            out[endpoint] = {"$ref": f"#/components/schemas/{schema.__name__}"}
    components["Problem"] = PROBLEM_SCHEMA
    return out, components


def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of ``app``."""
    bodies, components = _schemas(app)
    paths: dict[str, dict[str, Any]] = {}
    problem = {
        "description": "an error, as application/problem+json",
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        summary, _, description = (inspect.getdoc(view) or "").partition("\n\n")
        path = _path(rule)
        public = rule.rule in PUBLIC_PATHS or rule.endpoint.startswith("openapi.")
        methods = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
        for method in methods:
            op: dict[str, Any] = {
                "operationId": rule.endpoint.replace(".", "_")
                + ("" if len(methods) == 1 else f"_{method.lower()}"),
                "tags": [rule.endpoint.split(".")[0]],
                "summary": " ".join(summary.split()),
                "responses": {
                    "2XX": {"description": "success", "content": {"application/json": {}}},
                    "default": problem,
                },
            }
            if description.strip():
                op["description"] = description.strip()
            parameters = _parameters(rule)
            if method in MUTATIONS:
                parameters.append(
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "a retry with the same key gets the first answer",
                        "schema": {"type": "string", "maxLength": 255},
                    }
                )
            if parameters:
                op["parameters"] = parameters
            if method in ("POST", "PUT", "PATCH") and rule.endpoint in bodies:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": bodies[rule.endpoint]}},
                }
            if public:
                op["security"] = []
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Vigil API",
            "version": __version__,
            "description": "Configuration (users, devices, rules, recipients, silences, "
            "subscriptions) and queries of a Vigil system. Every route but the public ones "
            "takes `Authorization: Bearer <token>`.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@bp.get("/openapi.json")
def openapi() -> dict[str, Any]:
    """This API's OpenAPI 3.1 document (public)."""
    reject_args(request.args.to_dict(flat=False))
    doc: dict[str, Any] = current_app.extensions.setdefault("vigil_openapi", document(current_app))
    return doc


@bp.get("/docs")
def docs() -> Response:
    """Interactive documentation of this API (public): every operation, tried with your
    token."""
    reject_args(request.args.to_dict(flat=False))
    return Response(DOCS_PAGE, mimetype="text/html")


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Vigil API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:12px 20px;display:flex;gap:16px;align-items:center}
header h1{font-size:18px;margin:0}header input{flex:1;max-width:420px;padding:5px}
main{padding:12px 20px;max-width:1100px}h2{margin:22px 0 6px;font-size:16px}
details{background:#fff;border:1px solid #d8dce3;border-radius:4px;margin:4px 0}
summary{cursor:pointer;padding:6px 10px;font-family:ui-monospace,monospace}
.m{display:inline-block;width:62px;font-weight:700}.get{color:#0a7}.post{color:#06c}
.put,.patch{color:#b70}.delete{color:#c22}.op{padding:6px 12px 12px}
textarea{width:100%;min-height:90px;font-family:ui-monospace,monospace}
pre{background:#f0f2f5;padding:8px;overflow:auto;max-height:360px}
label{display:block;margin:4px 0}.s{color:#667}
</style></head><body>
<header><h1>Vigil API</h1>
<input id="token" type="password" placeholder="bearer token (kept in this tab only)">
<a href="/openapi.json" style="color:#9cf">openapi.json</a></header>
<main id="ops">Loading /openapi.json...</main>
<script>
"use strict";
const tok = document.getElementById("token");
tok.value = sessionStorage.getItem("vigil-token") || "";
tok.addEventListener("change", () => sessionStorage.setItem("vigil-token", tok.value));
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}
function skeleton(schema, doc) {
  if (!schema) return "";
  if (schema.$ref) schema = doc.components.schemas[schema.$ref.split("/").pop()];
  const out = {};
  for (const k of schema.required || []) out[k] = "";
  return JSON.stringify(out, null, 2);
}
function operation(path, method, op, doc) {
  const box = el("div", {class: "op"});
  if (op.description) box.append(el("p", {class: "s"}, op.description));
  const inputs = {};
  for (const p of op.parameters || []) {
    if (p.in !== "path") continue;
    inputs[p.name] = el("input", {placeholder: p.name});
    box.append(el("label", {}, p.name + " ", inputs[p.name]));
  }
  const query = el("input", {placeholder: "query string, e.g. limit=10"});
  box.append(el("label", {}, "query ", query));
  let body = null;
  if (op.requestBody) {
    const schema = op.requestBody.content["application/json"].schema;
    body = el("textarea", {}, skeleton(schema, doc));
    box.append(el("label", {}, "body (" + (schema.$ref || "").split("/").pop() + ")"), body);
  }
  const result = el("pre", {}, "");
  const send = el("button", {}, "Send");
  send.addEventListener("click", async () => {
    let url = path.replace(/\\{(\\w+)\\}/g, (_, n) => encodeURIComponent(inputs[n].value));
    if (query.value) url += "?" + query.value;
    const headers = {};
    if (tok.value) headers["Authorization"] = "Bearer " + tok.value;
    const init = {method: method.toUpperCase(), headers};
    if (body) { headers["Content-Type"] = "application/json"; init.body = body.value; }
    result.textContent = "...";
    try {
      const r = await fetch(url, init);
      const text = await r.text();
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) {}
      result.textContent = r.status + " " + r.statusText + "\\n" + shown;
    } catch (e) { result.textContent = String(e); }
  });
  box.append(send, result);
  return box;
}
fetch("/openapi.json").then(r => r.json()).then(doc => {
  const root = document.getElementById("ops");
  root.textContent = "";
  root.append(el("p", {class: "s"}, doc.info.description));
  const byTag = {};
  for (const [path, item] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(item))
      (byTag[op.tags[0]] = byTag[op.tags[0]] || []).push([path, method, op]);
  for (const tag of Object.keys(byTag).sort()) {
    root.append(el("h2", {}, tag));
    for (const [path, method, op] of byTag[tag]) {
      const head = el("summary", {}, el("span", {class: "m " + method}, method.toUpperCase()),
                      path + "  ", el("span", {class: "s"}, op.summary || ""));
      const d = el("details", {id: op.operationId}, head);
      d.append(operation(path, method, op, doc));
      root.append(d);
    }
  }
});
</script></body></html>
"""
