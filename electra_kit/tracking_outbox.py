"""The on-disk outbox behind :mod:`electra_kit.tracking`, and ``sync_outbox``.

While the store answers, records (see :mod:`electra_kit.tracking_delivery`) go straight to it and
never touch the disk. Once a delivery fails, every record not yet acknowledged is appended to
``run_dir/mlflow_outbox/<uid>.jsonl`` (flush + fsync, so it survives a crash or a kill), and so is
every later one until the outbox drains. The same file carries ``{"ack": [seq, ...]}`` lines for
what the store acknowledged, ``{"run_id": ...}`` once the run exists, and a ``{"header": ...}``
first line saying where the records belong (tracking URI, experiment, run name). Small artifacts are
copied to ``mlflow_outbox/files/<uid>/`` when logged. ``run_dir/mlflow_run.json`` holds the run's
uid and, once known, its MLflow run id.

``sync_outbox(run_dir)`` delivers what a finished (or crashed) run left behind; a live Tracker holds
an flock on its outbox, so the two never deliver the same file at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from .tracking_delivery import Deliverer, TransientError, logger

OUTBOX_DIR = "mlflow_outbox"
RUN_FILE = "mlflow_run.json"


# ----------------------------------------------------------------------------------- run file


def read_run_file(run_dir: str | Path) -> dict:
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_run_file(run_dir: str | Path, info: dict) -> None:
    """Atomically replace run_dir/mlflow_run.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".mlflow_run.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, run_dir / RUN_FILE)


# ------------------------------------------------------------------------------------- outbox


class Outbox:
    """The append-only journal of one run (``uid``); one writer at a time (an flock guards it)."""

    def __init__(self, run_dir: str | Path, uid: str):
        self.dir = Path(run_dir) / OUTBOX_DIR
        self.uid = uid
        self.path = self.dir / f"{uid}.jsonl"
        self.files_dir = self.dir / "files" / uid
        self.header: dict = {}
        self.pending: dict[int, dict] = {}  # seq -> record, not yet acknowledged
        self.run_id: str | None = None
        self.max_seq = -1
        self._lock_fh = None

    # -- locking: the live tracker holds it, so that sync_outbox leaves its file alone
    def lock(self) -> bool:
        self.dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.dir / f"{self.uid}.lock", "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        self._lock_fh = fh
        return True

    def unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None
            try:
                (self.dir / f"{self.uid}.lock").unlink()
            except OSError:
                pass

    def load(self) -> "Outbox":
        """Read the journal back (a torn last line from a crash is skipped)."""
        if not self.path.exists():
            return self
        with open(self.path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if "header" in entry:
                    self.header = entry["header"]
                elif "ack" in entry:
                    for seq in entry["ack"]:
                        self.pending.pop(seq, None)
                elif "run_id" in entry:
                    self.run_id = entry["run_id"]
                elif "seq" in entry:
                    self.pending[entry["seq"]] = entry
                    self.max_seq = max(self.max_seq, entry["seq"])
        return self

    def exists(self) -> bool:
        return self.path.exists()

    def _write(self, entries: Iterable[dict]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)
        with open(self.path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def append(self, records: list[dict], header: dict | None = None) -> None:
        entries: list[dict] = []
        if not self.path.exists():
            entries.append({"header": {**(header or self.header), "uid": self.uid}})
            self.header = entries[0]["header"]
            if self.run_id:
                entries.append({"run_id": self.run_id})
        entries.extend(records)
        self._write(entries)
        for r in records:
            self.pending[r["seq"]] = r
            self.max_seq = max(self.max_seq, r["seq"])

    def ack(self, records: list[dict]) -> None:
        seqs = [r["seq"] for r in records if r["seq"] in self.pending]
        if not seqs:
            return
        self._write([{"ack": seqs}])
        for seq in seqs:
            rec = self.pending.pop(seq)
            if rec.get("snapshot"):
                shutil.rmtree(Path(rec["path"]).parent, ignore_errors=True)

    def bind(self, run_id: str) -> None:
        self.run_id = run_id
        if self.path.exists():
            self._write([{"run_id": run_id}])

    def ordered(self) -> list[dict]:
        return [self.pending[s] for s in sorted(self.pending)]

    def remove(self) -> None:
        """Delete the journal once everything in it was acknowledged (and folders left empty)."""
        try:
            self.path.unlink()
        except OSError:
            pass
        shutil.rmtree(self.files_dir, ignore_errors=True)
        self.prune()

    def prune(self) -> None:
        for d in (self.files_dir, self.files_dir.parent, self.dir):
            try:
                d.rmdir()  # only if empty
            except OSError:
                pass


# --------------------------------------------------------------------------------------- sync


def sync_outbox(run_dir: str | Path, tracking_uri: str | None = None) -> dict[str, int]:
    """Deliver what runs in ``run_dir`` left in their outbox; returns counts.

    ``tracking_uri`` overrides the store each outbox recorded in its header. Outboxes held by a live
    Tracker are skipped. Safe to run again: acknowledged records are never resent.
    Returns ``{"outboxes", "delivered", "remaining", "rejected", "skipped"}``.
    """
    counts = dict.fromkeys(("outboxes", "delivered", "remaining", "rejected", "skipped"), 0)
    box_dir = Path(run_dir) / OUTBOX_DIR
    for path in sorted(box_dir.glob("*.jsonl")) if box_dir.is_dir() else []:
        box = Outbox(run_dir, path.stem)
        if not box.lock():
            counts["skipped"] += 1
            continue
        try:
            box.load()
            counts["outboxes"] += 1
            run_info = read_run_file(run_dir)
            run_id = box.run_id or (run_info.get("run_id") if run_info.get("uid") == box.uid else None)
            uri = tracking_uri or box.header.get("tracking_uri") or run_info.get("tracking_uri")
            if uri is None:
                from .tracking import resolve_tracking_uri

                uri = resolve_tracking_uri(None)

            def bind(new_id: str, box=box, uri=uri) -> None:
                box.bind(new_id)
                info = read_run_file(run_dir)
                if info.get("uid") in (None, box.uid):
                    write_run_file(
                        run_dir, {**info, **box.header, "uid": box.uid, "run_id": new_id, "tracking_uri": uri}
                    )

            deliverer = Deliverer(uri, box.uid, run_id=run_id, on_bind=bind)
            delivered = []

            def ack(group: list[dict], box=box, delivered=delivered) -> None:
                box.ack(group)
                delivered.extend(group)

            try:
                deliverer.deliver(box.ordered(), ack)
            except TransientError as e:
                logger.warning("outbox %s: delivery to %s failed: %s", path.name, uri, e)
            counts["delivered"] += len(delivered)
            counts["rejected"] += deliverer.rejected
            counts["remaining"] += len(box.pending)
            if not box.pending:
                box.remove()
        finally:
            box.unlock()
            box.prune()
    return counts
