"""The control model of an audit (a model known not to have seen the suspect images, or an adapted model's
base): audited like the suspect, refused when it is the suspect itself.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from cdi_audit.console import StageProgress
from cdi_audit.errors import AuditError, InvalidSetting, SettingsProblem
from cdi_audit.inputs.images import ImageSet
from cdi_audit.pipeline.model_features import ModelFeatures, ModelPool, load_and_extract, on_model
from cdi_audit.pipeline.settings import AuditSettings

if TYPE_CHECKING:  # torch-backed types, imported only when a model is used
    from cdi_audit.blackbox.variation import BlackBoxTarget
    from cdi_audit.features.base import Extractor
    from cdi_audit.models.target import Target


def control_settings(settings: AuditSettings, extractors: list[Extractor]) -> AuditSettings:
    """The control model audited like the suspect: the same features and seed, through the same kind of
    access (black-box, by local variations, when the suspect is an endpoint or audited black-box)."""
    black_box = settings.endpoint is not None or settings.access == "blackbox"
    return replace(on_model(settings, settings.control_model, extractors), control=None, endpoint=None,
                   access="blackbox" if black_box else "auto")


def extract_with_control(settings: AuditSettings, suspect: ModelFeatures, image_sets: list[ImageSet],
                         progress: StageProgress, timings: dict[str, float],
                         models: ModelPool | None = None) -> ModelFeatures:
    """Features of the same images from the control model; its errors name it, and the suspect model itself
    is refused as its own control."""
    fingerprint = suspect.target.description.fingerprint

    def refuse_suspect_model(target: Target | BlackBoxTarget) -> None:
        if target.description.fingerprint == fingerprint:
            raise SettingsProblem(
                "it has the same content fingerprint as the suspect model, so it cannot be a control; give a "
                "model known not to have seen the suspect images (for a fine-tune, its base model).")

    try:
        control = load_and_extract(control_settings(settings, suspect.extractors), image_sets, progress, timings,
                                   "control_", refuse_suspect_model, models)
    except InvalidSetting as error:
        raise SettingsProblem(f"{settings.control_label} {settings.control_model.path}: {error}") from error
    except AuditError as error:
        raise type(error)(f"{settings.control_label} {settings.control_model.path}: {error}") from error
    missing = sorted(set(suspect.table.columns) - set(control.table.columns))
    if missing:
        control.notes.append(f"The control model could not serve {', '.join(missing)}; its effect is measured "
                             "without them.")
    return control
