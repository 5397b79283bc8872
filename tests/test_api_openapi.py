"""The OpenAPI document and the docs page: public, every route in it with a summary, every
reference resolving, and each request body's schema the very one that validates it: a body
it refuses is refused by the route, naming the key."""

from __future__ import annotations

import re
from typing import Any

import pytest

pytestmark = pytest.mark.integration

#: path parameters that name things that exist in the test's API
EXISTING = {"user": "admin", "device": "dev-1", "rule_id": "r1", "metric": "temperature"}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_the_document_lists_every_route_with_its_summary_and_resolves(client):
    anon = client.application.test_client()
    resp = anon.get("/openapi.json")  # public
    assert resp.status_code == 200
    doc = resp.get_json()
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] == "Vigil API"
    routes = set()
    for rule in client.application.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    listed = {(p, m) for p, item in doc["paths"].items() for m in item}
    assert listed == routes
    ops = [op for item in doc["paths"].values() for op in item.values()]
    assert all(op["summary"] for op in ops), [op["operationId"] for op in ops if not op["summary"]]
    assert len({op["operationId"] for op in ops}) == len(ops)
    components = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in components
    # public routes need no token; the others a bearer token
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/rules"]["post"]
    assert doc["security"] == [{"bearer": []}]
    rules = doc["paths"]["/rules"]["post"]
    assert rules["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RuleBody"
    }
    assert "kind" in components["RuleBody"]["properties"]
    assert components["RuleBody"]["properties"]["kind"]["anyOf"][0]["enum"][0] == "threshold"
    assert any(p["name"] == "Idempotency-Key" for p in rules["parameters"])
    assert anon.get("/").get_json()["openapi"] == "/openapi.json"


def test_every_documented_body_is_the_schema_that_validates_it(client):
    rule = {"id": "r1", "metric": "temperature", "op": "above", "threshold": 1}
    made = client.post("/rules", json=rule)
    assert made.status_code == 201, made.get_json()
    doc = client.get("/openapi.json").get_json()
    checked = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if "requestBody" not in op:
                continue
            url = re.sub(r"\{(\w+)\}", lambda m: EXISTING[m[1]], path)
            resp = client.open(url, method=method.upper(), json={"zz_not_a_field": 1})
            problem = resp.get_json()
            assert resp.status_code == 400, (method, path, problem)
            assert resp.mimetype == "application/problem+json"
            assert "zz_not_a_field" in problem["detail"], (method, path, problem)
            checked += 1
    assert checked >= 15
    # a type the schema states is the type the route takes
    schema = doc["components"]["schemas"]["Recipients"]
    assert schema["properties"]["emails"]["type"] == "array"
    resp = client.put("/users/admin/recipients", json={"emails": "ops@example.org"})
    assert resp.status_code == 400
    assert resp.get_json()["detail"] == "emails: Input should be a valid list, not a string"


def test_the_docs_page_is_public_and_needs_nothing_but_the_api(client):
    anon = client.application.test_client()
    resp = anon.get("/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert 'fetch("/openapi.json")' in page and "Authorization" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no CDN
    assert anon.get("/docs?x=1").status_code == 400  # like every route, no stray parameter
