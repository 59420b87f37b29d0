"""The one fence around Optuna's private names: every `_`-prefixed Optuna attribute, module or method the tuner
uses is read here, nowhere else in tuner/.

Why each is needed (Optuna 5.0, pinned to `optuna>=5.0,<5.1` in pyproject.toml):
- `Study._study_id`, `Trial._trial_id` / `FrozenTrial._trial_id`: the storage API is keyed by these ids and
  Optuna exposes no public accessor for them.
- `Study._storage` and `_CachedStorage._backend`: a study wraps an RDBStorage in a cache; the heartbeat callback
  needs the storage object the tuner opened (ResilientStorage) to record why a trial failed.
- `optuna.storages._rdb.models`: the heartbeat table, to read heartbeat ages by the database's own clock.
- `optuna._hypervolume.compute_hypervolume`: Optuna's exact hypervolume (WFG / 2-D sweep).
- `optuna.storages._cached_storage._CachedStorage`: Optuna's trial cache, which `create_study` puts around an
  RDBStorage on its own; the resilient storage is a wrapper object (not an RDBStorage), so it builds the cache itself
  and retries each call made to it. The cache calls RDBStorage's private methods (`_create_new_trial`,
  `_set_trial_param`, `_get_trials`, `_get_best_trial_id`) inside those calls.
- `optuna.storages._heartbeat.BaseHeartbeat` and its `_get_stale_trial_ids`: Optuna runs heartbeats and fails
  stale trials only for a storage of that class (`HeartbeatStorage` maps the private query to `stale_trial_ids`).
- `optuna.storages._rdb.models.TrialUserAttributeModel`: to record `worker_lost` on a trial Optuna has just failed
  (its API refuses attrs on a finished trial; `write_finished_trial_user_attrs`).
- `optuna.storages._rdb.storage._create_scoped_session`, the trial, attribute and intermediate-value models, and
  RDBStorage's `_set_trial_attr_without_commit` / `_set_trial_intermediate_value_without_commit` (dialects without
  a multi-row upsert) and `_set_trial_value_without_commit`: `write_trial_writes` writes a held trial's attrs and
  intermediate values in one transaction (Optuna commits each on its own; tuner.storage.write_buffer), with the
  trial's final state and values in the same transaction when it finishes.
- `optuna.storages._grpc.servicer.OptunaStorageProxyService` and `..auto_generated.api_pb2_grpc`: the gRPC proxy
  server as `run_grpc_proxy_server` builds it, but with SO_REUSEPORT off (grpc's default lets a second proxy bind
  the same port silently) and without its blocking wait, so `tuner proxy` says when it listens and tests stop it.
- `optuna.storages._heartbeat.BaseHeartbeat` again for the proxy client (`ProxyHeartbeat`): Optuna's gRPC API has
  no heartbeat calls, so a client's beat is a system-attr write the tuner's proxy turns into a heartbeat.

`tests/tuner/storage/test_optuna_compat.py` fails when any forwarded method or private name disappears or changes its
signature, so a new Optuna release cannot break the retry layer silently.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import sqlalchemy as sa
from optuna._hypervolume import compute_hypervolume as _compute_hypervolume
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models as _models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.study._frozen import (
    FrozenStudy as FrozenStudy,  # what get_all_studies returns; not exported by optuna.study
)

# The BaseStorage methods the resilient storage (tuner.storage.resilient.ResilientStorage) forwards to Optuna's
# cached RDB storage, each inside its retry loop. Every one talks to the database (or may: the cache reads through).
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
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_trial_params",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_best_trial",
)
# RDBStorage's private methods that `_CachedStorage` calls on its backend (inside the retried calls above), and the
# stale-trial query Optuna's heartbeat machinery calls on a storage: an Optuna release that renames one breaks the
# cache or the heartbeat, so tests/tuner/storage/test_optuna_compat.py checks them.
BACKEND_PRIVATE_METHODS: tuple[str, ...] = (
    "_create_new_trial",
    "_set_trial_param",
    "_get_trials",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
)


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


def cached_storage(rdb: RDBStorage) -> BaseStorage:
    """Optuna's trial cache around `rdb`, as `optuna.create_study(storage=rdb)` would build it (finished trials are
    read once; the cache calls the RDB storage's private methods listed in BACKEND_PRIVATE_METHODS)."""
    return _CachedStorage(rdb)


def rdb_stale_trial_ids(rdb: RDBStorage, study_id_: int) -> list[int]:
    """RDBStorage's own stale-trial query: RUNNING trials of the study whose heartbeat is older than the grace
    period."""
    return list(rdb._get_stale_trial_ids(study_id_))


def write_finished_trial_user_attrs(engine: sa.engine.Engine, trial_id_: int, attrs: dict[str, Any]) -> None:
    """Upsert user attrs on a trial whatever its state, in one transaction (Optuna's API refuses a finished trial;
    used only to record why a heartbeat-stale trial failed, right after this process failed it). Values are stored
    JSON-encoded, as Optuna stores them."""
    model = _models.TrialUserAttributeModel
    with engine.begin() as conn:
        for key, value in attrs.items():
            conn.execute(sa.delete(model).where(model.trial_id == trial_id_, model.key == key))
            conn.execute(sa.insert(model).values(trial_id=trial_id_, key=key, value_json=json.dumps(value)))


def write_trial_writes(
    rdb: RDBStorage,
    trial_id_: int,
    user_attrs: dict[str, Any],
    system_attrs: dict[str, Any],
    intermediate_values: dict[int, float],
    finish: tuple[optuna.trial.TrialState, Sequence[float] | None] | None = None,
) -> None:
    """Upsert attrs (JSON-serialisable values) and intermediate values (step -> value) of one running trial in one
    transaction: the trial's row read and locked (it must still be updatable: UpdateFinishedTrialError otherwise, as
    Optuna's own writes raise), then one multi-row upsert per table on Postgres and SQLite, Optuna's own per-item
    writes inside the same transaction elsewhere. `finish` (a finished state, its values or None): the trial is also
    finished in that transaction, as RDBStorage.set_trial_state_values does it."""
    with _create_scoped_session(rdb.scoped_session) as session:
        trial = _models.TrialModel.find_or_raise_by_id(trial_id_, session, for_update=True)
        state: Any = trial.state  # a TrialState once loaded (the model's column type says otherwise)
        rdb.check_trial_is_updatable(trial_id_, state)
        _upsert_trial_writes(rdb, session, trial_id_, user_attrs, system_attrs, intermediate_values)
        if finish is not None:
            new_state, values = finish
            if not new_state.is_finished():
                raise ValueError(f"finish: {new_state.name} is not a finished state")
            for objective, value in enumerate(values or ()):
                rdb._set_trial_value_without_commit(session, trial, objective, value)
            trial.state = new_state
            trial.datetime_complete = _dt.datetime.now()


def _upsert_trial_writes(
    rdb: RDBStorage,
    session: Any,
    trial_id_: int,
    user_attrs: dict[str, Any],
    system_attrs: dict[str, Any],
    intermediate_values: dict[int, float],
) -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(rdb.engine.name)
    attr_tables = ((_models.TrialUserAttributeModel, user_attrs), (_models.TrialSystemAttributeModel, system_attrs))
    if dialect is None:
        for model, attrs in attr_tables:
            for key, value in attrs.items():
                rdb._set_trial_attr_without_commit(session, model, trial_id_, key, value)
        for step, value in intermediate_values.items():
            rdb._set_trial_intermediate_value_without_commit(session, trial_id_, step, value)
        return
    for model, attrs in attr_tables:
        if attrs:
            rows = [{"trial_id": trial_id_, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
            insert = dialect.insert(model).values(rows)
            session.execute(
                insert.on_conflict_do_update(
                    index_elements=[model.trial_id, model.key], set_={"value_json": insert.excluded.value_json}
                )
            )
    if intermediate_values:
        iv = _models.TrialIntermediateValueModel
        rows = []
        for step, value in intermediate_values.items():
            stored, kind = iv.intermediate_value_to_stored_repr(value)
            rows.append(
                {"trial_id": trial_id_, "step": step, "intermediate_value": stored, "intermediate_value_type": kind}
            )
        insert = dialect.insert(iv).values(rows)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=[iv.trial_id, iv.step],
                set_={
                    "intermediate_value": insert.excluded.intermediate_value,
                    "intermediate_value_type": insert.excluded.intermediate_value_type,
                },
            )
        )


class HeartbeatStorage(BaseHeartbeat):
    """Optuna's heartbeat interface (a private base class) with its private stale-trial query under a public name:
    a storage implements `stale_trial_ids`; Optuna's `fail_stale_trials` calls `_get_stale_trial_ids`, which lands
    there."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        raise NotImplementedError


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
