"""Delivery of tracking records to MLflow (used by :mod:`electra_kit.tracking` and ``sync_outbox``).

A *record* is one thing to tell MLflow, as a JSON object with a sequence number ``seq``::

    {"seq": 0, "type": "create", "experiment": ..., "artifact_location": ..., "run_name": ...,
     "start_time": ms}
    {"seq": 1, "type": "reopen", ...same fields as create}            # resume=True of a known run id
    {"seq": 2, "type": "params", "params": {k: str}}                   # <= 100 per record
    {"seq": 3, "type": "tags", "tags": {k: str}}                       # <= 100 per record
    {"seq": 4, "type": "metrics", "step": int, "ts": ms, "values": {k: float}}   # <= 1000 per record
    {"seq": 5, "type": "artifact", "path": str, "artifact_path": str|None, "snapshot": bool}
    {"seq": 6, "type": "status", "status": "FINISHED", "end_time": ms, "error": str|None}

``Deliverer.deliver`` sends them in order, consecutive metrics/params/tags merged into
``log_batch`` requests within MLflow's limits. A failure a retry may fix raises ``TransientError``
and leaves the rest untouched; a refusal no retry fixes (bad key, changed param value on resume...)
is narrowed down item by item and the refused item dropped with a warning, so one bad value never
holds up the rest of the run.

Exactly-once: a record is sent until acknowledged and never after (see tracking_outbox). The one
window left, a request that reached the store but whose answer was lost, is closed by MLflow's SQL
stores themselves: a metric's identity is (key, step, timestamp, value), the timestamp is fixed when
``log_metrics`` is called, and a resent batch is de-duplicated on the primary key (3.17's
``SqlAlchemyStore._log_metrics``); params, tags, artifacts and status are idempotent; a run creation
first looks the run up by its ``electra_kit.uid`` tag. (The legacy ``file:`` store does not
de-duplicate metrics.)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterable

logger = logging.getLogger("electra_kit.tracking")

UID_TAG = "electra_kit.uid"
ERROR_TAG = "electra_kit.error"

MAX_METRICS_PER_BATCH = 1000  # mlflow.utils.validation.MAX_METRICS_PER_BATCH
MAX_PARAMS_TAGS_PER_BATCH = 100  # ... MAX_PARAMS_TAGS_PER_BATCH
MAX_ENTITIES_PER_BATCH = 1000
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_REQUEST_BYTES = 900_000  # under MAX_BATCH_LOG_REQUEST_SIZE (1e6), with room for JSON overhead
TRUNCATED = "...[truncated]"

# Error codes that no retry will fix: the record is dropped with a warning, not kept forever.
_PERMANENT_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "INVALID_STATE",
    "BAD_REQUEST",
    "MALFORMED_REQUEST",
    "RESOURCE_ALREADY_EXISTS",
}


class TransientError(Exception):
    """The store did not answer (or failed in a way a later retry may fix)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def truncate(value: str, limit: int, keep_tail: bool = False) -> str:
    if len(value) <= limit:
        return value
    n = limit - len(TRUNCATED)
    return TRUNCATED + value[-n:] if keep_tail else value[:n] + TRUNCATED


def is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return True
    return getattr(exc, "error_code", None) in _PERMANENT_CODES


# ----------------------------------------------------------------------------------- delivery


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


class Deliverer:
    """Sends records, in order, to one tracking store; knows the run id once there is one."""

    def __init__(
        self,
        tracking_uri: str,
        uid: str,
        run_id: str | None = None,
        on_bind: Callable[[str], None] | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.uid = uid
        self.run_id = run_id
        self.on_bind = on_bind
        self.rejected = 0
        self.bad_keys: set[str] = set()  # metric keys MLflow refused once: not sent again
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.tracking_uri)
        return self._client

    # -- public entry point
    def deliver(self, records: list[dict], on_ack: Callable[[list[dict]], None]) -> None:
        """Deliver ``records`` in order; ``on_ack`` gets each acknowledged group.

        Raises TransientError at the first request that failed for a reason a retry may fix: the
        records from there on are neither acknowledged nor rejected.
        """
        for group in self._requests(records):
            try:
                self._send(group)
            except TransientError:
                raise
            except Exception as e:  # noqa: BLE001 - classify, never crash the caller
                if not is_permanent(e):
                    raise TransientError(_describe(e)) from e
                self._send_one_by_one(group, e)
            on_ack(group)

    # -- grouping consecutive metrics/params/tags records into one log_batch request each
    @staticmethod
    def _requests(records: list[dict]) -> Iterable[list[dict]]:
        group: list[dict] = []
        counts = {"metrics": 0, "params": 0, "tags": 0, "bytes": 0}
        keys: dict[str, set] = {"params": set(), "tags": set()}
        for rec in records:
            kind = rec["type"]
            if kind not in keys and kind != "metrics":
                if group:
                    yield group
                    group, counts, keys = [], dict.fromkeys(counts, 0), {"params": set(), "tags": set()}
                yield [rec]
                continue
            payload = rec["values"] if kind == "metrics" else rec[kind]
            n = len(payload)
            size = sum(len(k) + len(str(v)) + 40 for k, v in payload.items())
            limit = MAX_METRICS_PER_BATCH if kind == "metrics" else MAX_PARAMS_TAGS_PER_BATCH
            full = (
                counts[kind] + n > limit
                or counts["metrics"] + counts["params"] + counts["tags"] + n > MAX_ENTITIES_PER_BATCH
                or counts["bytes"] + size > MAX_REQUEST_BYTES
                or (kind in keys and not keys[kind].isdisjoint(payload))
            )
            if group and full:
                yield group
                group, counts, keys = [], dict.fromkeys(counts, 0), {"params": set(), "tags": set()}
            group.append(rec)
            counts[kind] += n
            counts["bytes"] += size
            if kind in keys:
                keys[kind].update(payload)
        if group:
            yield group

    def _send(self, group: list[dict]) -> None:
        kind = group[0]["type"]
        if kind in ("create", "reopen"):
            return self._create(group[0])
        if self.run_id is None:
            raise TransientError("the MLflow run has not been created yet")
        if kind == "artifact":
            return self._artifact(group[0])
        if kind == "status":
            return self._status(group[0])
        self._log_batch(group)

    def _log_batch(self, group: list[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics, params, tags = [], [], []
        for rec in group:
            if rec["type"] == "metrics":
                values = rec["values"].items()
                metrics += [Metric(k, v, rec["ts"], rec["step"]) for k, v in values if k not in self.bad_keys]
            elif rec["type"] == "params":
                params += [Param(k, v) for k, v in rec["params"].items()]
            else:
                tags += [RunTag(k, v) for k, v in rec["tags"].items()]
        self.client.log_batch(self.run_id, metrics=metrics, params=params, tags=tags, synchronous=True)

    def _send_one_by_one(self, group: list[dict], first_error: BaseException) -> None:
        """A request was refused for good: find the items at fault, deliver the rest."""
        items: list[dict] = []
        for rec in group:
            kind = rec["type"]
            if kind in ("metrics", "params", "tags"):
                payload = rec["values"] if kind == "metrics" else rec[kind]
                items += [
                    {**rec, ("values" if kind == "metrics" else kind): {k: v}} for k, v in payload.items()
                ]
            else:
                items.append(rec)
        if len(items) == 1 and len(group) == 1:
            return self._reject(group[0], first_error)
        for item in items:
            try:
                self._send([item])
            except TransientError:
                raise
            except Exception as e:  # noqa: BLE001
                if not is_permanent(e):
                    raise TransientError(_describe(e)) from e
                self._reject(item, e)

    def _reject(self, rec: dict, error: BaseException) -> None:
        if rec["type"] == "metrics":
            self.bad_keys.update(rec["values"])
        self.rejected += 1
        if self.rejected <= 5:
            what = {k: v for k, v in rec.items() if k not in ("seq",)}
            logger.warning("MLflow refused a record, dropping it: %s (%s)", _short(what), _describe(error))
        elif self.rejected == 6:
            logger.warning("MLflow refused more records; not reporting each one any more")

    def _experiment_id(self, rec: dict) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(rec["experiment"])
        if exp is None:
            try:
                return self.client.create_experiment(
                    rec["experiment"], artifact_location=rec.get("artifact_location")
                )
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise TransientError(_describe(e)) from e
                exp = self.client.get_experiment_by_name(rec["experiment"])
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _create(self, rec: dict) -> None:
        from mlflow.entities import ViewType
        from mlflow.exceptions import MlflowException

        if rec["type"] == "reopen" and self.run_id:
            try:
                self.client.update_run(self.run_id, status="RUNNING")
                return
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                logger.warning(
                    "MLflow run %s is not in %s; starting a new run", self.run_id, self.tracking_uri
                )
                self.run_id = None
        if self.run_id:  # a create that was acknowledged before (e.g. replayed by sync)
            return
        try:
            exp_id = self._experiment_id(rec)
            found = self.client.search_runs(
                [exp_id],
                filter_string=f"tags.`{UID_TAG}` = '{self.uid}'",
                run_view_type=ViewType.ALL,
                max_results=1,
            )
            if found:
                run_id = found[0].info.run_id
            else:
                run = self.client.create_run(
                    exp_id,
                    start_time=rec.get("start_time"),
                    tags={UID_TAG: self.uid},
                    run_name=rec.get("run_name"),
                )
                run_id = run.info.run_id
        except MlflowException as e:  # a run we cannot create is never a reason to drop the rest
            raise TransientError(_describe(e)) from e
        self.run_id = run_id
        if self.on_bind:
            self.on_bind(run_id)

    def _artifact(self, rec: dict) -> None:
        path = Path(rec["path"])
        if path.is_dir():
            dest = "/".join(p for p in (rec.get("artifact_path"), rec.get("name") or path.name) if p)
            self.client.log_artifacts(self.run_id, str(path), dest)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), rec.get("artifact_path"))
        else:
            raise FileNotFoundError(f"artifact {path} no longer exists")

    def _status(self, rec: dict) -> None:
        if rec.get("error"):
            self.client.set_tag(
                self.run_id, ERROR_TAG, truncate(rec["error"], MAX_TAG_VAL_LENGTH, keep_tail=True)
            )
        self.client.set_terminated(self.run_id, status=rec["status"], end_time=rec.get("end_time"))


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return truncate(text, 300)


def _short(obj) -> str:
    return truncate(json.dumps(obj, default=str), 300)
