"""Domain types of triage: modalities, referral categories, a classification.

After Kermany et al., Cell 2018: OCT CNV and DME are urgent, DRUSEN
routine, NORMAL observation; chest X-ray bacterial pneumonia urgent, viral
supportive care, normal observation. Their DICOM codes are in
``dicom_io.codes``.
"""

from __future__ import annotations

import dataclasses
import enum


class TriageModality(enum.StrEnum):
    OCT = "oct"
    CXR = "cxr"


class Referral(enum.StrEnum):
    """Referral categories of Kermany et al. 2018, most urgent first."""

    URGENT = "urgent"
    ROUTINE = "routine"
    SUPPORTIVE_CARE = "supportive care"
    OBSERVATION = "observation"

    @property
    def rank(self) -> int:
        """0 is the most urgent; used to pick the deciding image of a study."""
        return list(Referral).index(self)

    @classmethod
    def parse(cls, value: str | Referral) -> Referral:
        try:
            return cls(value)
        except ValueError as exc:
            allowed = ", ".join(r.value for r in cls)
            raise ValueError(f"Unknown referral category {value!r}; use one of {allowed}.") from exc


# The paper's mapping from class label to referral category.
PAPER_REFERRALS: dict[str, Referral] = {
    "CNV": Referral.URGENT,
    "DME": Referral.URGENT,
    "DRUSEN": Referral.ROUTINE,
    "NORMAL": Referral.OBSERVATION,
    "BACTERIA": Referral.URGENT,
    "VIRUS": Referral.SUPPORTIVE_CARE,
    # cxr-pneumonia pools bacterial and viral; the urgent one decides.
    "PNEUMONIA": Referral.URGENT,
}


@dataclasses.dataclass(frozen=True)
class Classification:
    """What one model said about one image (the pure result of inference)."""

    modality: str
    label: str
    referral: Referral
    probability: float
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    model_sha256: str
    execution_provider: str
    inference_ms: float
    frame_number: int | None = None
