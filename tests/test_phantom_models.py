"""The committed phantom-trained packages still fit today's phantoms and runtime."""

from __future__ import annotations

from model_runtime.package import load_package
from phantoms import trained_models


def test_the_committed_packages_match_the_sources_they_were_made_with() -> None:
    assert trained_models.committed_digest() == trained_models.source_digest(), (
        "phantoms/trained is stale: the phantoms, the model input or the "
        "package format changed since it was made. Run `make phantom-models` and commit it."
    )


def test_the_committed_packages_verify() -> None:
    for modality in trained_models.MODALITIES:
        manifest, _model = load_package(trained_models.COMMITTED / modality)
        assert manifest.modality.value == modality
