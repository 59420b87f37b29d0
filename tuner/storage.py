"""Storage: URL resolution, engine options, password masking, and the one function that builds a study.

Decisions (architecture.md, issue 4):
- URL: `--storage` flag, else TUNER_STORAGE, else `sqlite:///<cwd>/tuner.db` (no server needed for the quickstart).
- Every RDB storage has heartbeats and `RetryHeartbeatStaleTrialCallback` (a worker killed mid-trial has its trial
  re-queued as WAITING after the grace period). Heartbeats only beat inside `study.optimize`.
- Postgres: `pool_pre_ping` (Optuna sets it only for MySQL; a long trial otherwise meets a connection the server or
  a NAT dropped while idle), `pool_recycle`, TCP keepalives and a connect timeout; before SQLAlchemy is involved the
  host is resolved and its port dialled with short timeouts, so an unreachable server fails in seconds with a
  message naming host and port (libpq's connect_timeout does not bound DNS resolution).
- A URL is only ever printed through `mask_url`.
- An open storage is a tuner.resilience.ResilientRDBStorage: it waits out a database outage (calls retried with
  backoff, up to OUTAGE_LIMIT_S), its heartbeat never kills the heartbeat thread, and a heartbeat-stale trial is
  recorded as `end_reason = worker_lost` before its retry is queued.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from tuner.errors import SpecError, StorageError

ENV_VAR = "TUNER_STORAGE"
DEFAULT_DB_FILE = "tuner.db"
SPEC_ATTR = "spec"  # study user attr: the normalised study YAML (workers rebuild the spec from it)
INIT_ATTR = "tuner:initialized"  # study system attr: metric names, spec and presets are in place
HEARTBEAT_INTERVAL_S = 30  # worker -> storage heartbeat period
GRACE_PERIOD_S = 120  # a RUNNING trial without a heartbeat for this long is stale and re-queued
MAX_RETRY = 3  # times a stale trial is re-queued
PREFLIGHT_S = 5.0  # DNS resolution + TCP dial together, before libpq is involved
CONNECT_TIMEOUT_S = 4  # libpq's connect_timeout (login) once the port answers -> under 10 s in all
POOL_RECYCLE_S = 300  # replace pooled connections older than this (idle-drop by servers, proxies, NAT)
OUTAGE_LIMIT_S = 600.0  # an open storage retries through a database outage this long (tuner.resilience)


# --- URLs ---------------------------------------------------------------------------------------------------------

def resolve_storage_url(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The storage URL: the flag, else $TUNER_STORAGE, else the embedded SQLite file `tuner.db` in the cwd."""
    env = os.environ if environ is None else environ
    if flag:
        return flag
    if env.get(ENV_VAR):
        return env[ENV_VAR]
    return f"sqlite:///{Path.cwd() / DEFAULT_DB_FILE}"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for printing (works on URLs SQLAlchemy cannot parse too)."""
    return re.sub(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<pw>[^@\s]*)@", r"\g<head>:***@", str(url))


def mask_text(text: str, url: str) -> str:
    """`text` with the URL's password removed wherever it appears (driver error messages may echo parts)."""
    text = str(text).replace(url, mask_url(url))
    m = re.search(r"://[^:/@\s]*:(?P<pw>[^@\s]+)@", url)
    if m and m.group("pw"):  # as a whole token only, so a short password does not garble ordinary words
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(m.group('pw'))}(?![A-Za-z0-9])", "***", text)
    return text


def _host_port(url: str) -> tuple[str | None, int | None, str]:
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:  # noqa: BLE001 - reported below with the masked URL
        raise StorageError(f"storage URL {mask_url(url)} cannot be parsed; write e.g. "
                           "postgresql+psycopg2://user:PASSWORD@127.0.0.1:5432/tuner or sqlite:///tuner.db") from None
    backend = u.get_backend_name()
    default_port = {"postgresql": 5432, "mysql": 3306}.get(backend)
    return u.host, (u.port or default_port), backend


def _preflight(url: str, host: str, port: int) -> None:
    """Resolve and dial host:port with short timeouts (DNS runs in a thread: getaddrinfo has no timeout)."""
    result: dict[str, Any] = {}

    def resolve() -> None:
        try:
            result["addrs"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            result["error"] = exc

    deadline = time.monotonic() + PREFLIGHT_S
    t = threading.Thread(target=resolve, daemon=True)
    t.start()
    t.join(PREFLIGHT_S)
    where = f"{host}:{port}"
    fix = f"check the host name and that the database server is running, or set --storage / {ENV_VAR}"
    if t.is_alive():
        raise StorageError(f"storage {mask_url(url)}: resolving host {where} timed out after {PREFLIGHT_S:g} s; {fix}")
    if "error" in result:
        raise StorageError(f"storage {mask_url(url)}: cannot resolve host {where} ({result['error']}); {fix}")
    last: Exception | None = None
    for family, kind, proto, _, addr in result["addrs"]:
        left = deadline - time.monotonic()
        if left <= 0:
            last = socket.timeout()
            break
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(left)
                s.connect(addr)
                return
        except OSError as exc:
            last = exc
    reason = "timed out" if isinstance(last, socket.timeout) else str(last)
    raise StorageError(f"storage {mask_url(url)}: cannot connect to {where} ({reason}); {fix}")


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for a storage URL (see the module docstring for why)."""
    _, _, backend = _host_port(url)
    if backend == "postgresql":
        return {
            "pool_pre_ping": True,
            "pool_recycle": POOL_RECYCLE_S,
            "connect_args": {
                "connect_timeout": CONNECT_TIMEOUT_S,
                "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
            },
        }
    if backend == "sqlite":
        # Several local workers share one file: wait for the write lock instead of failing at once.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True, "pool_recycle": POOL_RECYCLE_S}


def open_storage(url: str, *, heartbeat_interval_s: int = HEARTBEAT_INTERVAL_S,
                 grace_period_s: int = GRACE_PERIOD_S, max_retry: int | None = MAX_RETRY,
                 outage_limit_s: float = OUTAGE_LIMIT_S):
    """RDBStorage with heartbeats and stale-trial retry. Raises StorageError (masked URL, host:port) within 10 s.

    Once open, the storage waits out a database outage of up to `outage_limit_s` (tuner.resilience): its calls
    are retried with backoff, a failed heartbeat is logged and the next one tried, and a stale trial's failure
    records `end_reason = worker_lost` before its retry is queued."""
    import optuna
    import sqlalchemy.exc

    from tuner.resilience import ResilientRDBStorage, WorkerLostRetryCallback

    if int(grace_period_s) < int(heartbeat_interval_s):
        raise StorageError(f"grace period {grace_period_s} s is shorter than the heartbeat interval "
                           f"{heartbeat_interval_s} s: live trials would be failed as stale; give a grace period of "
                           "several heartbeats, e.g. --heartbeat-s 30 --grace-s 120")
    host, port, backend = _host_port(url)
    if backend == "sqlite":
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise StorageError(f"storage {mask_url(url)}: folder {Path(path).parent} does not exist; create it or "
                               "choose another file")
    elif host and port:
        _preflight(url, host, port)
    last: Exception | None = None
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                # heartbeat_interval and the retry callback are marked experimental; that is not news to a user.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return ResilientRDBStorage(
                    url,
                    outage_limit_s=outage_limit_s,
                    engine_kwargs=engine_kwargs(url),
                    heartbeat_interval=int(heartbeat_interval_s),
                    grace_period=int(grace_period_s),
                    heartbeat_stale_trial_callback=WorkerLostRetryCallback(max_retry=max_retry),
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # Two processes creating the tables of a fresh database at once: the loser retries and finds them.
            last = exc
            time.sleep(0.2 * (attempt + 1))
        except sqlalchemy.exc.OperationalError as exc:
            detail = " ".join(str(exc.orig if exc.orig is not None else exc).split())
            where = f" at {host}:{port}" if host else ""
            raise StorageError(f"storage {mask_url(url)}{where}: {mask_text(detail, url)}; check that a database "
                               f"server answers there and the user, password and database name, or set --storage / "
                               f"{ENV_VAR}") from None
        except (ValueError, ImportError, RuntimeError) as exc:
            raise StorageError(f"storage {mask_url(url)}: {mask_text(str(exc), url)}") from None
    raise StorageError(f"storage {mask_url(url)}: could not create the tables ({mask_text(str(last), url)})")


# --- samplers -----------------------------------------------------------------------------------------------------

def storage_from_flag(flag: str | None, **kwargs):
    """(url, storage) for a CLI `--storage` value, resolved and opened."""
    url = resolve_storage_url(flag)
    return url, open_storage(url, **kwargs)


def heartbeat_ages_s(storage, study_id: int) -> dict[int, float]:
    """trial_id -> seconds since the last heartbeat of each RUNNING trial, by the database's own clock."""
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    hb, tr = models.TrialHeartbeatModel, models.TrialModel
    with storage.engine.connect() as conn:
        now = conn.execute(sa.select(sa.func.now())).scalar()
        rows = conn.execute(sa.select(hb.trial_id, hb.heartbeat).join(tr, tr.trial_id == hb.trial_id)
                            .where(tr.study_id == study_id)).all()
    if now is None:
        return {}
    now = now.replace(tzinfo=None)  # as Optuna does: heartbeats are stored without a time zone
    return {int(tid): (now - beat.replace(tzinfo=None)).total_seconds() for tid, beat in rows}


_SPEC_SEED = object()


def make_sampler(spec, *, seed: Any = _SPEC_SEED):
    """The spec's sampler. Constraints need no `constraints_func` in Optuna 5: TPE, NSGA-II and GP read each
    trial's recorded constraint (tuner.constraints) on their own; `constraints_func` is deprecated.

    Determinism: by default the sampler is seeded with the spec's `sampler.seed`, so one worker alone replays the
    same sequence of configurations from that seed. Parallel workers must not all use it (they would draw the same
    configurations): tuner.worker passes `seed=tuner.resilience.worker_seed(spec seed, worker id)`, the study seed
    mixed with a hash of the worker's host:pid, and logs it."""
    import optuna

    s = spec.sampler
    kw = s.kwargs
    if seed is not _SPEC_SEED:
        import dataclasses

        s = dataclasses.replace(s, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.name == "tpe":
            conditional = any(p.when for p in spec.space.params)
            return optuna.samplers.TPESampler(
                seed=s.seed,
                n_startup_trials=kw.get("n_startup_trials", 10),
                n_ei_candidates=kw.get("n_ei_candidates", 24),
                multivariate=kw.get("multivariate", True),  # joint density: ranks and checkpointing interact
                group=conditional and kw.get("multivariate", True),  # conditional spaces need group with multivariate
                constant_liar=kw.get("constant_liar", True),  # parallel workers do not pile onto one point
            )
        if s.name == "nsga2":
            # Optuna's default population (50) means a short study never leaves the random first generation.
            population = kw.get("population_size", max(4, min(50, spec.n_trials // 5)))
            return optuna.samplers.NSGAIISampler(
                seed=s.seed, population_size=population,
                **{k: kw[k] for k in ("mutation_prob", "crossover_prob") if k in kw},
            )
        if s.name == "gp":
            return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=kw.get("n_startup_trials", 10))
        if s.name == "random":
            return optuna.samplers.RandomSampler(seed=s.seed)
        if s.name == "grid":
            return optuna.samplers.GridSampler(spec.space.grid(), seed=s.seed)
    raise SpecError(f"sampler {s.name!r} is not one of tpe, nsga2, gp, random, grid")


# --- studies ------------------------------------------------------------------------------------------------------

def _comparable(d: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(d)
    out.pop("n_trials", None)  # how many trials one run executes is not part of the study's identity
    return out


def create_or_load_study(spec, storage, *, sampler=None, wait_s: float = 10.0):
    """Create the spec's study (metric names, spec YAML as user attr `spec`, presets enqueued) or load it.

    The only place that calls `optuna.create_study`. Exactly one of several concurrent callers creates the study
    (the storage's unique study name decides) and only that caller enqueues the presets, so they are queued once;
    the others wait up to `wait_s` for it to finish initialising (and finish the job themselves if it died).
    An existing study with a different definition is an error, never silently reused.
    """
    import optuna
    import yaml

    sampler = sampler if sampler is not None else make_sampler(spec)
    try:
        study = optuna.create_study(storage=storage, study_name=spec.name, directions=spec.directions,
                                    sampler=sampler, load_if_exists=False)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler)
        created = False
    if not created:
        stored_dirs = [d.name.lower() for d in study.directions]
        if stored_dirs != list(spec.directions):
            raise SpecError(f"{spec.path or spec.name}: objectives: study {spec.name!r} already exists with directions "
                            f"{stored_dirs}; rename the study (name:) or delete the old one")
        def initialised() -> bool:
            return bool(storage.get_study_system_attrs(study._study_id).get(INIT_ATTR))

        deadline = time.monotonic() + wait_s
        while not initialised() and time.monotonic() < deadline:
            time.sleep(0.1)
        if initialised():
            stored = study.user_attrs.get(SPEC_ATTR)
            if stored is not None and _comparable(yaml.safe_load(stored)) != _comparable(spec.to_dict()):
                old, new = _comparable(yaml.safe_load(stored)), _comparable(spec.to_dict())
                keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise SpecError(f"{spec.path or spec.name}: {', '.join(keys)}: study {spec.name!r} already exists "
                                "with a different definition; rename the study (name:) to start a new one, or "
                                "restore the old values")
            return study
    # creator (or the survivor of a creator that died half-way)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.metric_names)  # names in the dashboard and in `study.metric_names`
    study.set_user_attr(SPEC_ATTR, spec.to_yaml())
    study.set_user_attr("vram_ceiling_gib", spec.vram_ceiling_gib)
    for name in spec.enqueue_presets:
        study.enqueue_trial(spec.preset_params(name), user_attrs={"preset": name}, skip_if_exists=not created)
    storage.set_study_system_attr(study._study_id, INIT_ATTR, True)
    return study


def study_names(storage) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_study(name: str, storage):
    """Load a study by name with the sampler its stored spec names (TPE when it has none).

    Raises StorageError naming the existing studies when there is no such study."""
    import optuna

    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        names = study_names(storage)
        listing = ", ".join(names) if names else "none"
        raise StorageError(f"study {name!r} not found in {mask_url(storage.url)} (studies there: {listing}); "
                           "create it with `tuner create STUDY.yaml` or pass the right --storage") from None
    spec = _stored_spec(name, storage.get_study_user_attrs(study_id))
    sampler = make_sampler(spec) if spec is not None else None
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler)


def _stored_spec(name: str, user_attrs: Mapping[str, Any]):
    import yaml

    from tuner.spec import spec_from_dict

    text = user_attrs.get(SPEC_ATTR)
    if text is None:
        return None
    return spec_from_dict(yaml.safe_load(text), where=f"study {name} (stored spec)", check_paths=False)


def study_spec(study):
    """The StudySpec stored on a study, or None for a study made outside tuner."""
    return _stored_spec(study.study_name, study.user_attrs)
