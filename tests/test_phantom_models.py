"""The committed phantom-trained packages still fit today's phantoms and runtime."""

from __future__ import annotations

from model_runtime.package import load_package
from tests import phantom_models


def test_the_committed_packages_match_the_sources_they_were_made_with() -> None:
    assert phantom_models.committed_digest() == phantom_models.source_digest(), (
        "tests/data/phantom-models is stale: the phantoms, the model input or the "
        "package format changed since it was made. Run `make phantom-models` and commit it."
    )


def test_the_committed_packages_verify() -> None:
    for modality in phantom_models.MODALITIES:
        manifest, _model = load_package(phantom_models.COMMITTED / modality)
        assert manifest.modality.value == modality
