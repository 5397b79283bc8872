"""Node operations over HTTP, the same as ``vigil storage``.

- ``GET /storage``: the layout and every server (state, share, hints, last seen).
- ``POST /storage/servers/<name>/fail`` and ``.../recover``: drain a server, undo it.
- ``GET /storage/replicas/<device>/<metric>``: the servers of a series.
- ``DELETE /storage/series/<device>/<metric>[?before=<epoch ms>]``: delete a series.
- Long work runs as a job, one at a time, answered ``202`` with its URL:
  ``POST /storage/repair``, ``POST /storage/servers`` (``{"name", "url"}``: add),
  ``DELETE /storage/servers/<name>`` (remove), ``PUT /storage/strategy``
  (``{"strategy": "consistent"|"full"}``). ``GET /storage/jobs/<id>`` shows its progress and
  result; a second job while one runs is a ``409``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from api.auth import require_admin
from api.body import check_declared
from api.names import check_path_names
from api.problems import Problem, problem_type
from api.resources import ApiResources, resources
from api.schemas import ServerBody, StrategyBody, body
from api.validation import reject_args
from storage_nodes.layout import STRATEGIES, LayoutError
from storage_nodes.ops import OperationError, Progress, StorageOps
from storage_nodes.repair import RepairProgress
from vigil.jsonin import JsonInputError, loads

log = logging.getLogger(__name__)
bp = Blueprint("storage", __name__, url_prefix="/storage")
bp.before_request(check_path_names)


@bp.before_request
def _admin_only() -> None:
    """Every storage route is an admin's: its servers' URLs, failing them, deleting data."""
    require_admin("storage operations")


MAX_BODY_BYTES = 16 * 1024
MAX_JOBS_KEPT = 50


@dataclass
class Job:
    id: int
    kind: str
    state: str = "running"  # running | done | failed
    phase: str = "starting"
    done: int = 0
    total: int = 0
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    finished_ms: int | None = None
    result: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "progress": {"phase": self.phase, "done": self.done, "total": self.total},
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "result": self.result,
            "error": self.error,
        }


class Jobs:
    """The node operations the API runs in the background, one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._jobs: dict[int, Job] = {}

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def start(self, kind: str, work: Callable[[Job], dict[str, Any]]) -> Job:
        with self._lock:
            running = [j for j in self._jobs.values() if j.state == "running"]
            if running:
                raise Problem(
                    409,
                    f"storage job {running[0].id} ({running[0].kind}) is still running",
                    type_=problem_type("storage-job-running"),
                    title="A storage job is running",
                    job=url_for("storage.job", job_id=running[0].id),
                )
            job = Job(next(self._ids), kind)
            self._jobs[job.id] = job
            for old in sorted(self._jobs)[:-MAX_JOBS_KEPT]:
                if self._jobs[old].state != "running":
                    del self._jobs[old]

        def run() -> None:
            try:
                job.result = work(job)
                job.state = "done"
            except (OperationError, LayoutError) as exc:
                job.error, job.state = str(exc), "failed"
            except Exception as exc:
                log.exception("storage job %d (%s) failed", job.id, kind)
                job.error, job.state = f"{type(exc).__name__}: {exc}", "failed"
            job.finished_ms = int(time.time() * 1000)
            log.warning("storage job %d (%s): %s", job.id, kind, job.error or "done")

        threading.Thread(target=run, name=f"storage-job-{job.id}", daemon=True).start()
        return job


_jobs = Jobs()


def storage_ops(res: ApiResources) -> StorageOps:
    """Node operations on the API's own cluster, following the writers' hint folders."""
    dirs = res.config.ingest.hint_dirs()
    return StorageOps(res.config.storage, writer_dirs=dirs, cluster=res.storage)


def _ops() -> StorageOps:
    return storage_ops(resources())


def _progress(job: Job) -> Progress:
    def report(phase: str, done: int, total: int) -> None:
        job.phase, job.done, job.total = phase, done, total

    return report


def _body() -> dict[str, Any]:
    if not request.is_json:
        raise Problem(415, "send a JSON object with 'Content-Type: application/json'")
    try:
        body = loads(request.get_data(cache=True), max_bytes=MAX_BODY_BYTES)
    except JsonInputError as exc:
        raise Problem(400, f"the body is not valid JSON: {exc.reason}") from None
    if not isinstance(body, dict):
        raise Problem(400, "the body must be a JSON object")
    check_declared(body, lambda detail: Problem(400, detail))
    return body


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise Problem(400, f"'{key}' must be a non-empty string")
    return value


def _operation(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OperationError as exc:
        raise Problem(
            409, str(exc), type_=problem_type("storage-operation"), title="Cannot do that now"
        ) from None


def _accepted(job: Job) -> tuple[Response, int]:
    resp = jsonify(job.to_json())
    resp.headers["Location"] = url_for("storage.job", job_id=job.id)
    return resp, 202


@bp.get("")
def status() -> dict[str, Any]:
    """The layout and every server as this API sees them."""
    reject_args(request.args.to_dict(flat=False))
    result: dict[str, Any] = _ops().status()
    repair = resources().auto_repair
    result["auto_repair"] = {
        "interval_s": resources().config.storage.repair_interval_s,
        "runs": 0 if repair is None else repair.runs,
        "failures": 0 if repair is None else repair.failures,
        "last": None if repair is None else repair.last,
    }
    down = resources().downsampler
    result["downsample"] = {
        **resources().config.storage.downsample.model_dump(),
        "last": None if down is None else down.last,
    }
    return result


@bp.post("/servers/<name>/fail")
def fail(name: str) -> dict[str, Any]:
    """Drain ``name``: writes for it become hints, reads avoid it."""
    reject_args(request.args.to_dict(flat=False))
    layout = _operation(lambda: _ops().fail(name))
    return {"server": name, "state": layout.server(name).state, "layout_version": layout.version}


@bp.post("/servers/<name>/recover")
def recover(name: str) -> dict[str, Any]:
    """Undo ``fail``: hints replay as soon as it answers."""
    reject_args(request.args.to_dict(flat=False))
    layout = _operation(lambda: _ops().recover(name))
    return {"server": name, "state": layout.server(name).state, "layout_version": layout.version}


@bp.get("/replicas/<device>/<metric>")
def replicas(device: str, metric: str) -> dict[str, Any]:
    """The replicas of a series and, during a move, all its owners."""
    reject_args(request.args.to_dict(flat=False))
    result: dict[str, Any] = _operation(lambda: _ops().replicas(device, metric))
    return result


@bp.delete("/series/<device>/<metric>")
def delete_series(device: str, metric: str) -> dict[str, Any]:
    """Delete a series, or with ``?before=<epoch ms>`` its points before that time; hints,
    read repair and repair never bring them back."""
    args = request.args.to_dict(flat=False)
    unknown = sorted(set(args) - {"before"})
    if unknown or len(args.get("before", [])) > 1:
        raise Problem(400, "the only query parameter is 'before' (epoch ms), at most once")
    before = None
    if "before" in args:
        raw = args["before"][0]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 16):
            raise Problem(400, "'before' must be epoch milliseconds (digits)")
        before = int(raw)
    done = _operation(lambda: _ops().delete_series(device, metric, before))
    return {"series": f"{device}/{metric}", "before_ms": before, **done.to_json()}


@bp.delete("/data")
def delete_data() -> dict[str, Any]:
    """Delete every series' points before ``?before=<epoch ms>`` (required), on every
    replica; ``pending`` names the servers that could not apply it yet."""
    args = request.args.to_dict(flat=False)
    if set(args) != {"before"} or len(args["before"]) != 1:
        raise Problem(400, "give 'before' (epoch ms), once, and nothing else", parameter="before")
    raw = args["before"][0]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 16) or int(raw) <= 0:
        raise Problem(400, "'before' must be epoch milliseconds (digits)", parameter="before")
    before = int(raw)
    done = _operation(lambda: _ops().delete_before(before))
    return {"series": "*", "before_ms": before, **done.to_json()}


@bp.post("/repair")
def repair() -> tuple[Response, int]:
    """Start anti-entropy repair over every series."""
    reject_args(request.args.to_dict(flat=False))
    ops = _ops()

    def work(job: Job) -> dict[str, Any]:
        def on_progress(p: RepairProgress) -> None:
            job.phase, job.done, job.total = "repair", p.series_done, p.series_total

        return ops.repair(on_progress=on_progress).to_json()

    return _accepted(_jobs.start("repair", work))


@bp.post("/servers")
@body(ServerBody)
def add() -> tuple[Response, int]:
    """Join a running, provisioned server: ``{"name": ..., "url": ...}``."""
    reject_args(request.args.to_dict(flat=False))
    body = _body()
    name, url = _string(body, "name"), _string(body, "url")
    ops = _ops()
    return _accepted(_jobs.start("add", lambda job: ops.add(name, url, _progress(job)).to_json()))


@bp.delete("/servers/<name>")
def remove(name: str) -> tuple[Response, int]:
    """Move ``name``'s share to the others, then drop it from the layout."""
    reject_args(request.args.to_dict(flat=False))
    ops = _ops()
    _operation(lambda: ops._known(name))
    return _accepted(_jobs.start("remove", lambda job: ops.remove(name, _progress(job)).to_json()))


@bp.put("/strategy")
@body(StrategyBody)
def strategy() -> tuple[Response, int]:
    """Switch between ``consistent`` and ``full`` replication (moves data)."""
    reject_args(request.args.to_dict(flat=False))
    wanted = _string(_body(), "strategy")
    if wanted not in STRATEGIES:
        raise Problem(400, f"'strategy' must be one of {', '.join(STRATEGIES)}")
    ops = _ops()
    return _accepted(
        _jobs.start(
            "strategy",
            lambda job: ops.set_strategy(wanted, _progress(job)).to_json(),
        )
    )


@bp.get("/jobs/<int:job_id>")
def job(job_id: int) -> dict[str, Any]:
    """A storage job's phase, progress, result or error."""
    reject_args(request.args.to_dict(flat=False))
    found = _jobs.get(job_id)
    if found is None:
        raise Problem(404, f"no storage job {job_id}")
    return found.to_json()
