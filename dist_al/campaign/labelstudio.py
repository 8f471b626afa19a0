"""Label Studio driven directly: a round's tasks pushed once, finished annotations pulled on every tick.

Transport: Label Studio's documented REST API over the standard library's urllib. Not ``label-studio-sdk``:
its 2.x releases pull in OpenCV, NLTK, lxml, pandas and a code generator, none of which dist-al needs, for
the seven endpoints used here (projects, import, tasks, local-files storages, token refresh).

The API key comes from ``LABEL_STUDIO_API_KEY``, never from the config. A personal access token (a JWT) is
exchanged at ``/api/token/refresh/`` for an access token that lives minutes, sent as ``Authorization: Bearer``
and renewed when Label Studio refuses it; a legacy token is sent as ``Authorization: Token``. Neither appears in
a message, a log line or a file: messages carry Label Studio's own error detail, redacted.

Push (idempotent). ``rounds/NNNN/label_studio.json`` records the project and, for every task made, the pair
(pool id, Label Studio task id). Tasks go in batches of ``labeling.push_batch``; before a batch is sent its pool
ids are recorded as ``sending``, and once Label Studio answers with the new task ids they are recorded and
``sending`` is cleared. A push that died with a batch in flight (or whose answer was lost) resumes by looking
for that batch in the project: tasks made after the last recorded one whose meta names this workdir and round
are adopted, and only the rest is sent. A re-run, a crash at any point or two ticks (the workdir lock
serialises them) never make a task twice. Sends are never retried blindly; reads are, on 5xx and dropped
connections.

Pull. Every tick reads the round's tasks (one id range, paged) and takes each task's latest non-cancelled
annotation (``labels.latest_label``); a task whose annotations were all cancelled counts as skipped. The
(pool id, label) pairs then go through the ingest policy like any labels file.

Failures are one line naming what happened: Label Studio unreachable, slow (``labeling.timeout_s``) or
answering 5xx (:class:`LabelStudioUnavailable`), a refused API key, a deleted project or task
(:class:`LabelStudioError`). Nothing of the round is written before the pull succeeded, and a push records
only what Label Studio confirmed, so the next tick carries on.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

from dist_al.campaign.labels import latest_label
from dist_al.campaign.workdir import Workdir
from dist_al.config import LabelingConfig
from dist_al.core.errors import UserError
from dist_al.credentials import REDACTED, redact
from dist_al.faults import crash_point

log = logging.getLogger(__name__)

ENV_KEY = "LABEL_STUDIO_API_KEY"
RECORD = "label_studio.json"  # in the round's folder
FROM_NAME = "label"  # the Choices control that holds the class
ATTEMPTS = 3  # reads, in all; backoff 0.5 s then 1 s
PAGE = 500  # tasks per page read


class LabelStudioError(UserError):
    """Label Studio refused or lost something the round needs; the message says what to do."""


class LabelStudioUnavailable(RuntimeError):
    """Label Studio did not answer, answered too slowly, or kept failing (5xx)."""


class _Missing(LabelStudioError):
    """404: the project or task asked for does not exist."""


class LabelStudio:
    """A Label Studio server reached with an API key (see the module docstring)."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 30):
        self.url = url.rstrip("/")
        self.shown = redact(self.url)
        self.timeout_s = timeout_s
        self._key = api_key
        self._personal = api_key.count(".") == 2 and api_key.startswith("eyJ")  # a JWT refresh token
        self._access: str | None = None

    @classmethod
    def from_config(cls, lab: LabelingConfig) -> LabelStudio:
        """The configured server, with the key from the environment.

        Raises:
            LabelStudioError: LABEL_STUDIO_API_KEY is not set.
        """
        key = os.environ.get(ENV_KEY, "").strip()
        if not key:
            raise LabelStudioError(
                f"labeling.backend is label-studio but {ENV_KEY} is not set: put a Label Studio access token "
                "(Account & Settings > Personal Access Token, or a legacy token) in the environment"
            )
        assert lab.url is not None  # the config checks it
        return cls(lab.url, key, lab.timeout_s)

    # -- transport --------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        """Text from a response, fit for one line: no key, no credential-shaped value."""
        text = " ".join(str(text).split())[:300].replace(self._key, REDACTED)
        return redact(text.replace(self._access, REDACTED) if self._access else text)

    def _send(self, method: str, path: str, params: dict | None, body: Any, authorization: str | None):
        url = self.url + path + ("?" + urlencode(params) if params else "")
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if authorization:
            headers["Authorization"] = authorization
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def _failure(self, err: BaseException) -> str:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError) or isinstance(err, TimeoutError):
            return f"did not answer within {self.timeout_s:g} s (labeling.timeout_s)"
        if isinstance(reason, ConnectionRefusedError):
            return "is not reachable (connection refused)"
        return f"is not reachable ({self._clean(f'{type(reason).__name__}: {reason}')})"

    def _detail(self, data: bytes) -> str:
        try:
            answer = json.loads(data)
        except ValueError:
            return self._clean(data.decode("utf-8", "replace"))
        if isinstance(answer, dict) and "detail" in answer:
            return self._clean(answer["detail"])
        if isinstance(answer, dict) and isinstance(answer.get("validation_errors"), dict):
            answer = answer["validation_errors"]
        return self._clean(json.dumps(answer))

    def _authorization(self) -> str:
        if not self._personal:
            return f"Token {self._key}"
        if self._access is None:
            try:
                status, data = self._send("POST", "/api/token/refresh/", None, {"refresh": self._key}, None)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                raise LabelStudioUnavailable(f"Label Studio at {self.shown} {self._failure(err)}") from None
            if status >= 500:
                raise LabelStudioUnavailable(f"Label Studio at {self.shown} answered {status} to a token refresh")
            if status != 200:
                raise LabelStudioError(
                    f"Label Studio at {self.shown} refused the personal access token in {ENV_KEY} ({status}: "
                    f"{self._detail(data)}); create a new one in Account & Settings"
                )
            self._access = json.loads(data)["access"]
        return f"Bearer {self._access}"

    def call(
        self, method: str, path: str, *, what: str, params: dict | None = None, body: Any = None, retry: bool = False
    ) -> Any:
        """One API call; its JSON answer.

        Reads (``retry=True``) are tried ``ATTEMPTS`` times on dropped connections, timeouts and 5xx; a write is
        sent once, since a lost answer does not say whether it was carried out.

        Raises:
            LabelStudioUnavailable: no answer, a timeout, or 5xx (after the retries).
            LabelStudioError: a refused key (401/403), a missing object (404) or a refused request (4xx).
        """
        renewed = False
        for attempt in range(1, ATTEMPTS + 1):
            last = attempt == ATTEMPTS or not retry
            try:
                status, data = self._send(method, path, params, body, self._authorization())
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                if last:
                    raise LabelStudioUnavailable(
                        f"Label Studio at {self.shown} {self._failure(err)} ({what})"
                    ) from None
                self._pause(attempt)
                continue
            if status == 401 and self._personal and not renewed:  # the access token expired: renew it once
                self._access, renewed = None, True
                status, data = self._send(method, path, params, body, self._authorization())
            if status in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.shown} refused the API key in {ENV_KEY} ({status}: {self._detail(data)}) "
                    f"while {what}; set a valid access token"
                )
            if status >= 500:
                if last:
                    raise LabelStudioUnavailable(
                        f"Label Studio at {self.shown} answered {status} while {what} ({self._detail(data)})"
                    )
                self._pause(attempt)
                continue
            if status == 404:
                raise _Missing(f"Label Studio at {self.shown} has no such object ({what})")
            if status >= 400:
                raise LabelStudioError(f"Label Studio at {self.shown} refused {what} ({status}: {self._detail(data)})")
            return json.loads(data) if data else None
        raise AssertionError("unreachable")

    @staticmethod
    def _pause(attempt: int) -> None:
        time.sleep(0.5 * 2 ** (attempt - 1) * random.uniform(0.5, 1.0))

    # -- endpoints ----------------------------------------------------------------------------

    def check(self) -> None:
        """Reaches the server and has the key accepted."""
        self.call("GET", "/api/current-user/whoami", what="checking the API key", retry=True)

    def project(self, project: int) -> dict:
        return self.call("GET", f"/api/projects/{project}/", what=f"reading project {project}", retry=True)

    def projects_titled(self, title: str) -> list[dict]:
        found, page = [], 1
        while True:
            answer = self.call(
                "GET",
                "/api/projects/",
                params={"title": title, "page": page, "page_size": 100},
                what=f"looking for project {title!r}",
                retry=True,
            )
            found += [p for p in answer["results"] if p.get("title") == title]
            if not answer.get("next"):
                return found
            page += 1

    def create_project(self, title: str, label_config: str) -> dict:
        return self.call(
            "POST",
            "/api/projects/",
            body={"title": title, "label_config": label_config},
            what=f"creating project {title!r}",
        )

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int]:
        answer = self.call(
            "POST",
            f"/api/projects/{project}/import",
            params={"return_task_ids": "true"},
            body=tasks,
            what=f"importing {len(tasks)} tasks into project {project}",
        )
        ids = answer.get("task_ids") if isinstance(answer, dict) else None
        if not isinstance(ids, list) or len(ids) != len(tasks):
            raise LabelStudioError(
                f"Label Studio at {self.shown} imported tasks into project {project} without naming them "
                "(no task_ids in its answer: an asynchronous import?); dist-al needs a synchronous import"
            )
        return ids

    def tasks(self, project: int, first: int, last: int) -> list[dict]:
        """The project's tasks with ids first..last, annotations included, read page by page."""
        query = {
            "filters": {
                "conjunction": "and",
                "items": [
                    {
                        "filter": "filter:tasks:id",
                        "operator": "in",
                        "type": "Number",
                        "value": {"min": first, "max": last},
                    }
                ],
            },
            "ordering": ["tasks:id"],
        }
        found: list[dict] = []
        page = 1
        while True:
            answer = self.call(
                "GET",
                "/api/tasks/",
                params={
                    "project": project,
                    "fields": "all",
                    "page": page,
                    "page_size": PAGE,
                    "query": json.dumps(query),
                },
                what=f"reading the tasks of project {project}",
                retry=True,
            )
            found += answer.get("tasks", [])
            if len(found) >= answer.get("total", 0) or not answer.get("tasks"):
                return found
            page += 1

    def ensure_local_storage(self, project: int, directories: set[str]) -> None:
        """Has the project serve the local files under ``directories`` (one local-files storage at their common
        directory, unless one already covers it)."""
        if not directories:
            return
        target = os.path.commonpath(sorted(directories))
        storages = self.call(
            "GET",
            "/api/storages/localfiles/",
            params={"project": project},
            what=f"reading the local-files storages of project {project}",
            retry=True,
        )
        if any(target == s["path"] or target.startswith(s["path"].rstrip("/") + "/") for s in storages or []):
            return
        self.call(
            "POST",
            "/api/storages/localfiles/",
            body={"project": project, "path": target, "title": "dist-al", "use_blob_urls": False},
            what=f"adding a local-files storage for {target} to project {project} (Label Studio needs "
            "LOCAL_FILES_SERVING_ENABLED=true and LOCAL_FILES_DOCUMENT_ROOT above it)",
        )


# -- the round's project ------------------------------------------------------------------


def project_classes(label_config: str) -> list[str] | None:
    """The choices of the ``label`` Choices control of a labeling config (None when it has none)."""
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError:
        return None
    for control in root.iter("Choices"):
        if control.get("name") == FROM_NAME:
            return [choice.get("value", "") for choice in control.iter("Choice")]
    return None


def _checked(client: LabelStudio, project: dict, class_names: list[str]) -> dict:
    have = project_classes(project.get("label_config") or "")
    if have != class_names:
        found = "no Choices control named 'label'" if have is None else f"the classes {have}"
        raise LabelStudioError(
            f"Label Studio project {project['id']} ({project.get('title')!r}) at {client.shown} has {found}; "
            f"the model's classes (labeling.classes) are {class_names}: fix its labeling config, or set "
            "labeling.project to a new title and dist-al creates a project with its own"
        )
    return project


def open_project(
    client: LabelStudio, lab: LabelingConfig, record: dict | None, *, label_config: str, class_names: list[str]
) -> dict:
    """The project the round's tasks are in (recorded) or go to (configured; a title not found is created).

    Raises:
        LabelStudioError: the recorded project was deleted while the config still names it; a configured id that
            does not exist; a title several projects have; a project whose classes differ from the model's.
    """
    if record is not None:
        try:
            return _checked(client, client.project(record["project"]), class_names)
        except _Missing:
            if lab.project in (record["project"], record["title"]):
                raise LabelStudioError(
                    f"Label Studio project {record['project']} ({record['title']!r}) at {client.shown}, where this "
                    f"round's {len(record['tasks'])} tasks were pushed, is gone (deleted?); nothing was changed: to "
                    "push the round again, set labeling.project to another project's id or to a new title"
                ) from None
            log.warning("project %s of this round is gone; pushing the round to %r", record["project"], lab.project)
    if isinstance(lab.project, int):
        try:
            return _checked(client, client.project(lab.project), class_names)
        except _Missing:
            raise LabelStudioError(
                f"config key labeling.project: Label Studio at {client.shown} has no project {lab.project}"
            ) from None
    assert lab.project is not None
    found = client.projects_titled(lab.project)
    if len(found) > 1:
        raise LabelStudioError(
            f"config key labeling.project: {len(found)} projects at {client.shown} are titled {lab.project!r} "
            f"(ids {', '.join(str(p['id']) for p in found)}); set it to the id of one"
        )
    if found:
        return _checked(client, client.project(found[0]["id"]), class_names)
    log.info("creating Label Studio project %r", lab.project)
    return client.create_project(lab.project, label_config)


# -- push ------------------------------------------------------------------------------------


def read_record(wd: Workdir, n: int) -> dict | None:
    uri = wd.round_path(n, RECORD)
    return wd.read_json(uri) if wd.exists(uri) else None


def _meta(wd: Workdir, n: int) -> dict:
    return {"dist_al_workdir": redact(wd.uri), "dist_al_round": n}


def push_round(
    client: LabelStudio,
    lab: LabelingConfig,
    wd: Workdir,
    n: int,
    ids: list,
    make_tasks: Callable[[list], tuple[list[dict], set[str]]],
    *,
    label_config: str,
    class_names: list[str],
) -> tuple[dict, int]:
    """Makes sure every selected id of round ``n`` has exactly one task in the round's project; returns the
    push record and how many tasks this call made. ``make_tasks(ids)`` builds the tasks of those ids (called
    only when some are missing) and names the local directories they link.

    Raises:
        LabelStudioError, LabelStudioUnavailable: see :class:`LabelStudio` and :func:`open_project`.
    """
    record = read_record(wd, n)
    project = open_project(client, lab, record, label_config=label_config, class_names=class_names)
    if record is None or record["project"] != project["id"]:
        record = {"url": client.shown, "project": project["id"], "title": project["title"], "tasks": [], "sending": []}
    meta = _meta(wd, n)
    if record["sending"]:
        _adopt(client, wd, n, record, meta)
    done = {pool_id for pool_id, _ in record["tasks"]}
    todo = [i for i in ids if i not in done]
    if not todo:
        return record, 0
    tasks, local_dirs = make_tasks(todo)
    client.ensure_local_storage(project["id"], local_dirs)
    made = 0
    for start in range(0, len(todo), lab.push_batch):
        batch = tasks[start : start + lab.push_batch]
        record["sending"] = [t["data"]["id"] for t in batch]
        wd.write_json(wd.round_path(n, RECORD), record)
        crash_point("labelstudio.before_send")
        task_ids = client.import_tasks(project["id"], [{**t, "meta": {**t.get("meta", {}), **meta}} for t in batch])
        crash_point("labelstudio.after_send")
        record["tasks"] += [[t["data"]["id"], tid] for t, tid in zip(batch, task_ids)]
        record["sending"] = []
        wd.write_json(wd.round_path(n, RECORD), record)
        made += len(batch)
    return record, made


def _adopt(client: LabelStudio, wd: Workdir, n: int, record: dict, meta: dict) -> None:
    """Records the tasks of a batch whose push died after Label Studio may have made them (module docstring)."""
    after = max((tid for _, tid in record["tasks"]), default=0) + 1
    sending = set(record["sending"])
    seen = set()
    for task in client.tasks(record["project"], after, 2**62):
        pool_id = (task.get("data") or {}).get("id")
        if {k: (task.get("meta") or {}).get(k) for k in meta} == meta and pool_id in sending and pool_id not in seen:
            record["tasks"].append([pool_id, task["id"]])
            seen.add(pool_id)
    log.info("a push of round %d died with %d tasks in flight: %d were made, adopted", n, len(sending), len(seen))
    record["sending"] = []
    wd.write_json(wd.round_path(n, RECORD), record)


# -- pull ------------------------------------------------------------------------------------


@dataclass
class Pulled:
    """The round's tasks as Label Studio has them now."""

    rows: list[tuple]  # (pool id, class index or the raw choice) of every annotated task
    pushed: int
    annotated: int
    skipped: int  # every annotation cancelled
    deleted: list[tuple]  # (task id, pool id) of tasks that no longer exist
    predicted: dict  # pool id -> the class proposed to the annotator (tasks sent with a prediction)


def pull_round(client: LabelStudio, record: dict, class_names: list[str]) -> Pulled:
    """Reads every task of the push record and its latest non-cancelled annotation.

    Raises:
        LabelStudioError: the project is gone; LabelStudioUnavailable: see :meth:`LabelStudio.call`.
    """
    pairs = record["tasks"]
    if not pairs:
        return Pulled([], 0, 0, 0, [], {})
    try:
        client.project(record["project"])
    except _Missing:
        raise LabelStudioError(
            f"Label Studio project {record['project']} ({record['title']!r}) at {client.shown}, where this round's "
            f"{len(pairs)} tasks were pushed, is gone (deleted?); nothing was changed: to push the round again, "
            "set labeling.project to another project's id or to a new title"
        ) from None
    task_ids = [tid for _, tid in pairs]
    found = {t["id"]: t for t in client.tasks(record["project"], min(task_ids), max(task_ids))}
    names = {name: k for k, name in enumerate(class_names)}
    rows, skipped, deleted, predicted = [], 0, [], {}
    for pool_id, tid in pairs:
        task = found.get(tid)
        if task is None:
            deleted.append((tid, pool_id))
            continue
        proposed = latest_label(task.get("predictions") or [], where=f"task {tid}", from_name=FROM_NAME)
        if isinstance(proposed, str) and proposed in names:
            predicted[pool_id] = names[proposed]
        annotations = task.get("annotations") or []
        where = f"Label Studio task {tid} (id {pool_id!r})"
        label = latest_label(annotations, where=where, from_name=FROM_NAME)
        if label is not None:
            rows.append((pool_id, names.get(label, label) if isinstance(label, str) else label))
        elif any(isinstance(a, dict) and a.get("was_cancelled") for a in annotations):
            skipped += 1
    return Pulled(rows, len(pairs), len(rows), skipped, deleted, predicted)
