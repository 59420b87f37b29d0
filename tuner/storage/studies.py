"""Creating, loading and naming studies; the spec stored on each (the only caller of optuna.create_study)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from tuner.errors import SpecError, StorageError
from tuner.storage import _optuna_compat as _compat
from tuner.storage._optuna_compat import study_id
from tuner.storage.samplers import make_sampler
from tuner.storage.trial_attrs import REFERENCE_ATTR, is_reference
from tuner.storage.urls import mask_url
from tuner.study.loader import spec_from_dict
from tuner.study.spec import StudySpec

SPEC_ATTR = "spec"  # study user attr where studies made before SPEC_SYSTEM_ATTR kept the spec (still read)
# Study system attr: the normalised study YAML (workers rebuild the spec from it). A system attr, not a user attr,
# so `optuna studies` (which prints every user attr) stays one short line per study.
SPEC_SYSTEM_ATTR = "tuner:spec"
INIT_ATTR = "tuner:initialized"  # study system attr: metric names, spec and presets are in place


def _comparable(d: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(d)
    out.pop("n_trials", None)  # how many trials one run executes is not part of the study's identity
    return out


def create_or_load_study(
    spec: StudySpec, storage: Any, *, sampler: optuna.samplers.BaseSampler | None = None, wait_s: float = 10.0
) -> optuna.Study:
    """Create the spec's study (metric names, spec YAML as user attr `spec`, presets and the baseline's reference
    trial enqueued) or load it.

    The only place that calls `optuna.create_study`. Exactly one of several concurrent callers creates the study
    (the storage's unique study name decides) and only that caller enqueues the presets, so they are queued once;
    the others wait up to `wait_s` for it to finish initialising (and finish the job themselves if it died).
    An existing study with a different definition is an error, never silently reused.
    """
    import optuna
    import yaml

    sampler = sampler if sampler is not None else make_sampler(spec, spec.sampler.seed)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=spec.name,
            directions=[optuna.study.StudyDirection[d.upper()] for d in spec.directions],
            sampler=sampler,
            load_if_exists=False,
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler)
        created = False
    if not created:
        stored_dirs = [d.name.lower() for d in study.directions]
        if stored_dirs != list(spec.directions):
            raise SpecError(
                f"{spec.path or spec.name}: objectives: study {spec.name!r} already exists with directions "
                f"{stored_dirs}; rename the study (name:) or delete the old one"
            )

        def initialised() -> bool:
            return bool(storage.get_study_system_attrs(study_id(study)).get(INIT_ATTR))

        deadline = time.monotonic() + wait_s
        while not initialised() and time.monotonic() < deadline:
            time.sleep(0.1)
        if initialised():
            stored = spec_text(storage, study_id(study))
            if stored is not None and _comparable(yaml.safe_load(stored)) != _comparable(spec.to_dict()):
                old, new = _comparable(yaml.safe_load(stored)), _comparable(spec.to_dict())
                keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise SpecError(
                    f"{spec.path or spec.name}: {', '.join(keys)}: study {spec.name!r} already exists "
                    "with a different definition; rename the study (name:) to start a new one, or "
                    "restore the old values"
                )
            return study
    # creator (or the survivor of a creator that died half-way)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.metric_names)  # names in the dashboard and in `study.metric_names`
    storage.set_study_system_attr(study_id(study), SPEC_SYSTEM_ATTR, spec.to_yaml())
    study.set_user_attr("vram_ceiling_gib", spec.vram_ceiling_gib)
    for name in spec.enqueue_presets:
        study.enqueue_trial(spec.preset_params(name), user_attrs={"preset": name}, skip_if_exists=not created)
    if spec.baseline is not None and (created or not any(is_reference(t) for t in study.get_trials(deepcopy=False))):
        # No params: the objective trains spec.baseline instead of sampling (skip_if_exists cannot tell {} apart).
        study.enqueue_trial({}, user_attrs={REFERENCE_ATTR: spec.baseline.kind})
    storage.set_study_system_attr(study_id(study), INIT_ATTR, True)
    return study


def study_names(storage: Any) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_study(name: str, storage: Any) -> optuna.Study:
    """Load a study by name with the sampler its stored spec names (TPE when it has none).

    Raises StorageError naming the existing studies when there is no such study."""
    import optuna

    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        names = study_names(storage)
        listing = ", ".join(names) if names else "none"
        raise StorageError(
            f"study {name!r} not found in {mask_url(storage.url)} (studies there: {listing}); "
            "create it with `tuner create STUDY.yaml` or pass the right --storage"
        ) from None
    spec = _stored_spec(name, spec_text(storage, study_id))
    sampler = make_sampler(spec, spec.sampler.seed) if spec is not None else None
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler)


def spec_text(storage: Any, study_id_: int) -> str | None:
    """The stored spec YAML of a study: its system attr, else (older studies) its user attr; None if neither."""
    text = storage.get_study_system_attrs(study_id_).get(SPEC_SYSTEM_ATTR)
    if text is None:
        text = storage.get_study_user_attrs(study_id_).get(SPEC_ATTR)
    return None if text is None else str(text)


def _stored_spec(name: str, text: str | None) -> StudySpec | None:
    import yaml

    if text is None:
        return None
    return spec_from_dict(yaml.safe_load(text), where=f"study {name} (stored spec)", check_paths=False)


def study_spec(study: optuna.Study) -> StudySpec | None:
    """The StudySpec stored on a study, or None for a study made outside tuner."""
    return _stored_spec(study.study_name, spec_text(_compat.storage_backend(study), study_id(study)))


def heartbeat_ages_s(storage: Any, study: Any) -> dict[int, float]:
    """trial_id -> seconds since the last heartbeat of each trial of `study` that beat, by the database's clock
    (empty through a `tuner proxy`: no heartbeats there, and no database to ask)."""
    if getattr(storage, "engine", None) is None:
        return {}
    return _compat.heartbeat_ages_s(storage.engine, study_id_=study_id(study))
