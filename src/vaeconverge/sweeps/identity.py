"""Run identity: the 16 hex digits that name a run in a result store, stable across versions of vaeconverge.

A run's identifier is the SHA-256 (first 16 hex digits) of the JSON, keys sorted, of the options it hashes:

* every option of **schema 1** (the options :class:`RunConfig`, its nested :class:`SyntheticConfig` and
  :class:`BBVIConfig` had when identifiers were first fixed, frozen in :data:`SCHEMA_1` below), whatever its
  value, exactly as identifiers were always computed, so every existing run keeps its identifier bit for bit;
* any option added since, only where its value differs from its default (``to_dict()`` of the configuration
  against ``to_dict()`` of a default-constructed configuration of the same class; the options of a nested
  configuration against a default-constructed one of the nested class). An option added with a default that
  keeps the old behaviour therefore leaves the identifiers of all existing runs, and the store's record of which
  runs are finished, as they were; a run that sets it to something else is a new run;
* not the execution-only options (:data:`EXECUTION_ONLY`), which change how or where a run executes, not what it
  computes;
* :data:`SCHEMA_VERSION`, only when it is not 1.

Why: a result store (:mod:`.store`) recognises the runs it has finished by their identifiers, so an identifier
that hashed every option would rename every stored run, and retrain it, each time an option is added.

Deliberate breaks: renaming or removing a schema-1 option, changing what an option's value means, or changing
a new option's default to one that computes something different, would make identifiers lie. Such a change
raises :data:`SCHEMA_VERSION` (every identifier changes, and stores retrain), or keeps the old meaning under the
old name. A new configuration class (a new ``kind`` of run) needs its own entry in :data:`SCHEMA_1` first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from ..bbvi.config import BBVIConfig
from ..config import RunConfig, SyntheticConfig

# Raised only by a deliberate break of every identifier; hashed only when not 1, so schema 1's ids stay as they were.
SCHEMA_VERSION = 1
_VERSION_KEY = "(schema)"  # not an identifier, so never the name of an option
# Options that change how a run executes or where its files are, not what it computes: left out of its identifier.
EXECUTION_ONLY = ("threads", "denormals", "data_dir", "device")

# The keys of each configuration class's ``to_dict()`` in schema 1 (BBVIConfig's includes its ``kind``). Frozen:
# never edit these lists, not even to add an option (a new option belongs in its dataclass only). Execution-only
# options are listed too (they are schema-1 options), and are left out of the hash by EXECUTION_ONLY.
SCHEMA_1: dict[type, frozenset[str]] = {
    RunConfig: frozenset((
        "data", "data_dir", "synthetic", "model", "latent_dim", "hidden", "depth", "activation", "softclip_s",
        "softclip_s1", "softclip_s2", "likelihood", "decoder_std", "learn_variance", "objective", "samples",
        "beta", "batch_size", "optimizer", "lr", "momentum", "adam_betas", "schedule", "schedule_power", "steps",
        "seed", "seeds", "clip_grad_norm", "threads", "denormals", "eval_every", "eval_points", "eval_samples",
        "constants",
    )),
    SyntheticConfig: frozenset(("n_samples", "data_dim", "latent_dim", "noise_std", "seed")),
    BBVIConfig: frozenset((
        "kind", "target", "family", "flow_layers", "objective", "samples", "batch_size", "optimizer", "lr",
        "momentum", "adam_betas", "schedule", "schedule_power", "steps", "seed", "seeds", "threads", "denormals",
        "eval_every", "eval_points", "eval_samples", "constants",
    )),
}

_ABSENT = object()


def run_id(config: RunConfig | BBVIConfig) -> str:
    """16 hex digits identifying what ``config`` computes: the hash of :func:`identity` (see the module's
    docstring for what it holds and why)."""
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:16]


def identity(config: RunConfig | BBVIConfig) -> dict[str, Any]:
    """The options :func:`run_id` hashes: ``config.to_dict()`` less the execution-only options, and less every
    option outside schema 1 (at any depth) that is at its default."""
    if _schema_1(type(config)) is None:
        raise TypeError(f"{type(config).__name__}: no schema-1 table of options (add one to SCHEMA_1)")
    options = _counted(config, config.to_dict(), type(config)().to_dict())
    for key in EXECUTION_ONLY:
        options.pop(key, None)
    if SCHEMA_VERSION != 1:
        options[_VERSION_KEY] = SCHEMA_VERSION
    return options


def _counted(config: Any, values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``values`` (the dictionary of ``config``) less the options outside ``config``'s schema-1 table that equal
    their ``defaults``; a nested configuration's options likewise, against its own class's defaults."""
    schema = _schema_1(type(config)) or frozenset()  # a nested class new since schema 1: all its options are new
    counted = {}
    for key, value in values.items():
        if key not in schema and value == defaults.get(key, _ABSENT):
            continue
        nested = getattr(config, key, None)
        if dataclasses.is_dataclass(nested) and not isinstance(nested, type) and isinstance(value, dict):
            value = _counted(nested, value, dataclasses.asdict(type(nested)()))
        counted[key] = value
    return counted


def _schema_1(cls: type) -> frozenset[str] | None:
    """The schema-1 table of ``cls`` or of the nearest class it derives from; None if there is none."""
    return next((SCHEMA_1[base] for base in cls.__mro__ if base in SCHEMA_1), None)
