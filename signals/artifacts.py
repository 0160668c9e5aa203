"""The model directory: ``model.ubj``, ``features.json`` and ``metadata.json``.

``features.json`` is the ordered feature list (the ``features_path`` of the config); it
must equal ``FEATURE_NAMES`` or the model refuses to load. ``metadata.json`` carries the
training range, per-feature statistics (for the feature gates), the prediction
distribution on the validation period (for drift monitoring), the xgboost version and
parameters, and the held-out report.

xgboost is imported inside the functions: it is a heavy import and the daemon only pays
for it when the model is enabled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel.errors import ConfigError
from signals.features import FEATURE_NAMES, FEATURE_VERSION

if TYPE_CHECKING:
    import xgboost as xgb

MODEL_FILE = "model.ubj"
FEATURES_FILE = "features.json"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A booster whose feature list was checked against ``FEATURE_NAMES``."""

    booster: xgb.Booster
    metadata: dict[str, Any]
    model_path: Path


def save_model_dir(out: Path, booster: xgb.Booster, metadata: dict[str, Any]) -> None:
    """Write the three files of a model directory (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / MODEL_FILE))
    (out / FEATURES_FILE).write_text(json.dumps(list(FEATURE_NAMES), indent=1) + "\n")
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=1, default=str) + "\n")


def load_model_dir(model_path: Path, features_path: Path | None = None,
                   metadata_path: Path | None = None) -> LoadedModel:
    """Load and check a model; ``features_path``/``metadata_path`` default to the files
    next to the model.

    Raises:
        ConfigError: a file is missing or unreadable, or the model's feature list differs
            from ``FEATURE_NAMES`` (a model trained for other features must not run).
    """
    features_path = features_path or model_path.parent / FEATURES_FILE
    metadata_path = metadata_path or model_path.parent / METADATA_FILE
    listed = _read_json(features_path, "signals.model.features_path")
    _check_features("signals.model.features_path", listed)
    metadata = _read_json(metadata_path, "signals.model.metadata_path")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_VERSION:
        raise ConfigError("signals.model.metadata_path", str(metadata_path),
                          f"metadata.json of format {FORMAT_VERSION} written by signals.train")
    _check_features("signals.model.metadata_path", metadata.get("feature_names"))
    if metadata.get("feature_version") != FEATURE_VERSION:
        raise ConfigError(
            "signals.model.metadata_path", f"feature_version {metadata.get('feature_version')}",
            f"features of version {FEATURE_VERSION} (the formulas changed: retrain the model)")
    import xgboost as xgb

    if not model_path.is_file():
        raise ConfigError("signals.model.model_path", str(model_path), "an existing model file")
    booster = xgb.Booster()
    try:
        booster.load_model(str(model_path))
    except xgb.core.XGBoostError as exc:
        raise ConfigError("signals.model.model_path", str(model_path),
                          f"a model xgboost can load ({exc})") from exc
    _check_features("signals.model.model_path", booster.feature_names)
    booster.set_param({"nthread": 1})
    return LoadedModel(booster, metadata, model_path)


def _read_json(path: Path, key: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(key, str(path), "an existing file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(key, str(path), f"valid JSON ({exc})") from None


def _check_features(key: str, names: Any) -> None:
    if names is None or list(names) == list(FEATURE_NAMES):
        if names is None and key != "signals.model.model_path":
            raise ConfigError(key, None, "a feature list")
        return
    names = list(names)
    diff = next((i for i, (a, b) in enumerate(zip(names, FEATURE_NAMES, strict=False))
                 if a != b), min(len(names), len(FEATURE_NAMES)))
    got = names[diff] if diff < len(names) else "<end>"
    want = FEATURE_NAMES[diff] if diff < len(FEATURE_NAMES) else "<end>"
    raise ConfigError(
        key, f"{len(names)} features",
        f"the {len(FEATURE_NAMES)} features of signals.features.FEATURE_NAMES in order; "
        f"first difference at position {diff}: model has {got!r}, code has {want!r} "
        "(retrain the model with this version)",
    )
