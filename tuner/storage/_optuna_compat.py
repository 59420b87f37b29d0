"""The one fence around Optuna's private names: every `_`-prefixed Optuna attribute, module or method the tuner
uses is read here, nowhere else in tuner/.

Why each is needed (Optuna 5.0, pinned to `optuna>=5.0,<5.1` in pyproject.toml):
- `Study._study_id`, `Trial._trial_id` / `FrozenTrial._trial_id`: the storage API is keyed by these ids and
  Optuna exposes no public accessor for them.
- `Study._storage` and `_CachedStorage._backend`: a study wraps an RDBStorage in a cache; the heartbeat callback
  needs the storage object the tuner opened (ResilientRDBStorage) to record why a trial failed.
- `optuna.storages._rdb.models`: the heartbeat table, to read heartbeat ages by the database's own clock.
- `optuna._hypervolume.compute_hypervolume`: Optuna's exact hypervolume (WFG / 2-D sweep).
- `RDBStorage`'s private methods that `_CachedStorage` calls on its backend (`_create_new_trial`,
  `_set_trial_param`, `_get_trials`, `_get_best_trial_id`, `_get_stale_trial_ids`): they talk to the database,
  so the resilient storage must retry them through an outage like the public ones.
- `optuna.storages._rdb.storage._create_scoped_session` and the attribute models: `write_trial_attrs` writes many
  trial attrs in one transaction (Optuna commits once per attr: 2 statements and a commit each, the largest part
  of a trial's storage time under many workers).
- `optuna.storages._grpc.servicer.OptunaStorageProxyService` and `..auto_generated.api_pb2_grpc`: the gRPC proxy
  server as `run_grpc_proxy_server` builds it, but with SO_REUSEPORT off (grpc's default lets a second proxy bind
  the same port silently) and without its blocking wait, so `tuner proxy` says when it listens and tests stop it.
- `optuna.storages._heartbeat.BaseHeartbeat`: what `study.optimize` checks to run a heartbeat thread; the proxy
  client (`ProxyHeartbeat`) implements it with a system-attr write the tuner's proxy turns into a heartbeat.
- `Trial._cached_frozen_trial`: a live trial's system attrs as read when it started (Optuna 5 has no public
  accessor; `storage.get_trial_system_attrs` is a database round trip for what the trial already holds).

`tests/tuner/storage/test_optuna_compat.py` fails when any wrapped RDBStorage method disappears or changes its
signature, so a new Optuna release cannot break the retry layer silently.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import optuna
import sqlalchemy as sa
from optuna._hypervolume import compute_hypervolume as _compute_hypervolume
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models as _models
from optuna.storages._rdb.storage import _create_scoped_session

# Storage methods retried through an outage: every RDBStorage method that talks to the database (the private ones
# are what optuna's _CachedStorage calls on its backend). Nested calls (get_all_trials -> _get_trials) retry only
# at the outermost call.
RETRIED_METHODS: tuple[str, ...] = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_n_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "get_trial_params",
    "_get_stale_trial_ids",
)

StorageT = TypeVar("StorageT", bound=type[RDBStorage])


def study_id(study: optuna.Study) -> int:
    """The storage id of `study`."""
    return int(study._study_id)


def trial_id(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> int:
    """The storage id of a trial (live or frozen)."""
    return int(trial._trial_id)  # type: ignore[union-attr]


def storage_backend(study: optuna.Study) -> Any:
    """The storage object the study was opened with (unwrapping Optuna's cache layer when there is one)."""
    storage = study._storage
    return getattr(storage, "_backend", storage)


def compute_hypervolume(points: Any, reference: Any) -> float:
    """Optuna's exact hypervolume of `points` [n, m] (all minimised) against `reference` [m]."""
    return float(_compute_hypervolume(points, reference))


def base_stale_trial_ids(storage: RDBStorage, study_id_: int) -> list[int]:
    """RDBStorage's own stale-trial query (bypassing any override)."""
    return list(RDBStorage._get_stale_trial_ids(storage, study_id_))


def heartbeat_ages_s(
    engine: sa.engine.Engine, *, study_id_: int | None = None, trial_id_: int | None = None
) -> dict[int, float]:
    """trial_id -> seconds since the trial's last heartbeat, by the database's own clock, for the trials of one
    study and/or one trial (a trial that never beat is absent)."""
    hb, tr = _models.TrialHeartbeatModel, _models.TrialModel
    query = sa.select(hb.trial_id, hb.heartbeat)
    if study_id_ is not None:
        query = query.join(tr, tr.trial_id == hb.trial_id).where(tr.study_id == study_id_)
    if trial_id_ is not None:
        query = query.where(hb.trial_id == trial_id_)
    with engine.connect() as conn:
        now = conn.execute(sa.select(sa.func.now())).scalar()
        rows = conn.execute(query).all()
    if now is None:
        return {}
    now = _naive(now)  # as Optuna does: heartbeats are stored without a time zone
    return {int(tid): (now - _naive(beat)).total_seconds() for tid, beat in rows}


def _naive(t: _dt.datetime) -> _dt.datetime:
    return t.replace(tzinfo=None)


def retry_wrapped(call: str, names: Sequence[str] = RETRIED_METHODS) -> Callable[[StorageT], StorageT]:
    """Class decorator: each RDBStorage method in `names` that the class (or a base between it and RDBStorage)
    does not override is routed through the class's `call` method as `self.<call>(name, base_method, args, kwargs)`.
    Explicit composition at class creation; nothing is patched at import of any other module."""

    def wrap(cls: StorageT) -> StorageT:
        for name in names:
            base = getattr(RDBStorage, name)  # AttributeError here: an Optuna upgrade removed the method
            if getattr(cls, name) is not base:
                continue
            setattr(cls, name, _routed(call, name, base))
        if issubclass(cls, StaleTrialHook):
            for name in HOOK_RETRIED_METHODS:
                base = getattr(StaleTrialHook, name)
                if getattr(cls, name) is base:
                    setattr(cls, name, _routed(call, name, base))
        return cls

    return wrap


def _routed(call: str, name: str, base: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(base)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, call)(name, base, args, kwargs)

    return method


def grpc_proxy_server(
    storage: Any, host: str, port: int, threads: int, read_gate: Callable[[], Any] | None = None
) -> Any:
    """Optuna's gRPC storage proxy server for `storage` (wrapped in Optuna's cache layer, as Optuna's docs ask) on
    host:port with `threads` handler threads; bound, not started (`.start()`, `.stop(grace)`). RuntimeError when
    the address cannot be bound (in use, bad host). `read_gate()`: a context manager every trial read (GetTrial,
    GetTrials) runs inside, so the proxy's stale-trial sweep can keep readers out while it fails a trial and
    queues its retry (tuner.storage.grpc_proxy.ReadWriteGate)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from optuna.storages import get_storage
    from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    class Servicer(OptunaStorageProxyService):
        """Optuna's servicer, plus heartbeats: a client's beat (a write of PROXY_HEARTBEAT_ATTR) becomes a row of
        the database's heartbeat table (the database's clock), as a direct worker's beat does."""

        def SetTrialSystemAttribute(self, request: Any, context: Any) -> Any:
            if request.key == PROXY_HEARTBEAT_ATTR:
                storage.record_heartbeat(request.trial_id)
                return api_pb2.SetTrialSystemAttributeReply()
            return super().SetTrialSystemAttribute(request, context)

        def GetTrial(self, request: Any, context: Any) -> Any:
            with gate():
                return super().GetTrial(request, context)

        def GetTrials(self, request: Any, context: Any) -> Any:
            with gate():
                return super().GetTrials(request, context)

    gate = read_gate or contextlib.nullcontext

    server = grpc.server(ThreadPoolExecutor(max_workers=threads), options=[("grpc.so_reuseport", 0)])
    add_servicer: Any = api_pb2_grpc.add_StorageServiceServicer_to_server  # generated code, untyped
    add_servicer(Servicer(get_storage(storage)), server)
    server.add_insecure_port(f"{host}:{port}")
    return server


PROXY_HEARTBEAT_ATTR = "tuner:heartbeat"  # a trial system attr the tuner's proxy records as a heartbeat instead


class ProxyHeartbeat(BaseHeartbeat):
    """Heartbeats of a gRPC proxy client (Optuna's gRPC API has no heartbeat calls): each beat is a trial system
    attr write (PROXY_HEARTBEAT_ATTR) that the tuner's proxy (`grpc_proxy_server`) records in the heartbeat table
    instead. The proxy fails stale trials itself, so a client reports none. `heartbeat_interval`: seconds between
    beats (None: no heartbeat). `set_trial_system_attr` comes from the storage class this is mixed into."""

    heartbeat_interval: int | None

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, PROXY_HEARTBEAT_ATTR, True)  # type: ignore[attr-defined]

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:  # noqa: ARG002 - Optuna's signature
        return []

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> None:
        return None


def storage_of(storage: Any) -> Any:
    """The storage under Optuna's cache layer (`_CachedStorage._backend`), or `storage` itself."""
    return getattr(storage, "_backend", storage)


def cached_system_attrs(trial: optuna.trial.Trial) -> dict[str, Any]:
    """A live trial's system attrs as Optuna read them when the trial started (plus those it set since)."""
    return dict(trial._cached_frozen_trial.system_attrs)


def write_trial_attrs(
    storage: RDBStorage, trial_id_: int, user_attrs: dict[str, Any], system_attrs: dict[str, Any]
) -> None:
    """Upsert `user_attrs` and `system_attrs` (JSON-serialisable values) of one trial in one transaction: one read
    of the trial (it must still be updatable, as `storage.check_trial_is_updatable` decides), then one multi-row
    upsert per attribute table on Postgres and SQLite, one statement per attr elsewhere (Optuna's own write)."""
    import json

    from sqlalchemy.dialects import postgresql, sqlite

    with _create_scoped_session(storage.scoped_session, True) as session:
        trial = _models.TrialModel.find_or_raise_by_id(trial_id_, session)
        storage.check_trial_is_updatable(trial_id_, cast(optuna.trial.TrialState, trial.state))
        dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(storage.engine.name)
        for model, attrs in (
            (_models.TrialUserAttributeModel, user_attrs),
            (_models.TrialSystemAttributeModel, system_attrs),
        ):
            if not attrs:
                continue
            if dialect is None:
                for key, value in attrs.items():
                    storage._set_trial_attr_without_commit(session, model, trial_id_, key, value)
                continue
            insert = dialect.insert(model).values(
                [{"trial_id": trial_id_, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
            )
            session.execute(
                insert.on_conflict_do_update(
                    index_elements=[model.trial_id, model.key], set_={"value_json": insert.excluded.value_json}
                )
            )


# Methods the tuner's own storage adds (on StaleTrialHook below), retried through an outage like Optuna's.
HOOK_RETRIED_METHODS: tuple[str, ...] = ("set_trial_attrs",)


class StaleTrialHook(RDBStorage):
    """RDBStorage whose private stale-trial query is reachable under a public name: override `stale_trial_ids`
    (Optuna's heartbeat machinery calls `_get_stale_trial_ids`, which lands there); and `set_trial_attrs`, many
    attrs of one trial in one transaction (`write_trial_attrs`)."""

    def set_trial_attrs(self, trial_id: int, user_attrs: dict[str, Any], system_attrs: dict[str, Any]) -> None:
        write_trial_attrs(self, trial_id, user_attrs, system_attrs)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        return base_stale_trial_ids(self, study_id)
