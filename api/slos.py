"""Service level objectives on the pipeline's own metrics (:mod:`api.slo`), evaluated
continuously by :mod:`api.slo_runner`.

- ``POST /slos`` (admin) ``{"id", "kind", "target", "threshold_s"?, "window_s"?,
  "description"?}``: kinds ingest_lag and alert_latency take ``threshold_s`` (one of the
  histograms' bounds), delivery_success does not; ``window_s`` defaults to 300.
- ``GET /slos``, ``GET /slos/<id>`` (any user): each with its ``state`` (met, violated,
  no_data), ``sli`` over the window, ``good``/``total`` events, ``since``, ``violations``
  (how many times it became violated) and ``last_violation_at``, and ``errors`` (targets
  that did not answer).
- ``DELETE /slos/<id>`` (admin).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from api.auth import require_admin
from api.body import json_object
from api.db import MAX_SLOS_STORED, get_store
from api.names import check_path_names
from api.problems import Problem, problem_type
from api.resources import resources
from api.schemas import SloBody, body
from api.slo import InvalidSlo, parse_slo
from api.slo_runner import SloRunner
from api.validation import reject_args

bp = Blueprint("slos", __name__, url_prefix="/slos")
bp.before_request(check_path_names)


def _runner() -> SloRunner:
    runner = resources().slo
    if runner is None:
        raise Problem(503, "SLOs are not evaluated by this API process")
    return runner


def _invalid(detail: str) -> Problem:
    return Problem(400, detail, type_=problem_type("invalid-slo"), title="Invalid SLO")


@bp.post("")
@body(SloBody)
def create() -> tuple[Response, int, dict[str, str]]:
    """Define an SLO (admin)."""
    reject_args(request.args.to_dict(flat=False))
    require_admin("defining SLOs")
    try:
        slo = parse_slo(json_object(_invalid))
    except InvalidSlo as exc:
        raise _invalid(str(exc)) from None
    store = get_store()
    if len(store.slos()) >= MAX_SLOS_STORED:
        raise Problem(409, f"at most {MAX_SLOS_STORED} SLOs")
    if not store.put_slo(slo):
        raise Problem(409, f"an SLO with id {slo.id!r} exists")
    view = _runner().view(slo, 0, None)
    return jsonify(view), 201, {"Location": url_for("slos.one", slo_id=slo.id)}


@bp.get("")
def index() -> dict[str, Any]:
    """Every SLO with its state now and its violations."""
    reject_args(request.args.to_dict(flat=False))
    runner = _runner()
    return {"slos": [runner.view(*row) for row in get_store().slos()]}


@bp.get("/<slo_id>")
def one(slo_id: str) -> dict[str, Any]:
    """One SLO with its state now and its violations."""
    reject_args(request.args.to_dict(flat=False))
    row = get_store().get_slo(slo_id)
    if row is None:
        raise Problem(404, f"no SLO {slo_id!r}")
    return _runner().view(*row)


@bp.delete("/<slo_id>")
def delete(slo_id: str) -> Response:
    """Remove an SLO (admin)."""
    reject_args(request.args.to_dict(flat=False))
    require_admin("removing SLOs")
    if not get_store().delete_slo(slo_id):
        raise Problem(404, f"no SLO {slo_id!r}")
    return Response(status=204)
