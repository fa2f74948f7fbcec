"""The daemon's inference path on phantom DICOM studies, and provider reporting."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from daemon.pipeline import classify_file
from daemon.routing import route
from domain.errors import InferenceError
from domain.triage import TriageModality
from model_runtime import classifier as runtime
from model_runtime.classifier import Classifier
from phantoms.files import write_dicom_studies


@pytest.mark.parametrize("modality", ["oct", "cxr"])
def test_phantom_studies_are_classified_correctly(
    modality: str, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    root = write_dicom_studies(modality, tmp_path, 5, seed=31)
    truth = json.loads((root / "lesions.json").read_text())
    classifier = Classifier(model_dirs[modality], device="auto")
    correct = 0
    for relative, record in truth.items():
        result = classify_file(root / relative, classifier)
        assert result.frame_number == record["frame"]
        assert abs(sum(result.probabilities.values()) - 1) < 1e-4
        correct += result.label == record["label"]
    assert correct / len(truth) >= 0.9


def test_provider_in_use_is_reported_once(
    tiny_model_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    runtime._fallback_reported.clear()
    with caplog.at_level(logging.WARNING, logger="model_runtime.classifier"):
        first = Classifier(tiny_model_dirs["oct"])
        second = Classifier(tiny_model_dirs["cxr"])
    fallbacks = [r for r in caplog.records if "CUDA execution provider could not" in r.message]
    if (
        "CUDAExecutionProvider" in ort.get_available_providers()
        and first.provider == "CPUExecutionProvider"
    ):
        assert len(fallbacks) == 1
    else:
        assert fallbacks == []
    assert first.provider == second.provider
    assert Classifier(tiny_model_dirs["oct"], device="cpu").provider == "CPUExecutionProvider"
    if first.provider == "CPUExecutionProvider":
        # Asked for CUDA where it cannot run: refused with a reason, never a
        # silent CPU fallback.
        with pytest.raises(InferenceError, match="cuda"):
            Classifier(tiny_model_dirs["oct"], device="cuda")
    else:
        assert Classifier(tiny_model_dirs["oct"], device="cuda").provider == "CUDAExecutionProvider"


@pytest.mark.parametrize(
    ("sop_class", "modality", "body_part", "expected"),
    [
        ("1.2.840.10008.5.1.4.1.1.77.1.5.4", "OPT", "", TriageModality.OCT),
        ("1.2.840.10008.5.1.4.1.1.1", "CR", "CHEST", TriageModality.CXR),
        ("1.2.840.10008.5.1.4.1.1.1.1", "DX", "chest", TriageModality.CXR),
        ("1.2.840.10008.5.1.4.1.1.1.1.1", "DX", "", TriageModality.CXR),
        ("1.2.840.10008.5.1.4.1.1.1.1", "DX", "HAND", None),
        ("1.2.840.10008.5.1.4.1.1.7", "OPT", "", TriageModality.OCT),
        ("1.2.840.10008.5.1.4.1.1.7", "OT", "CHEST", TriageModality.CXR),
        ("1.2.840.10008.5.1.4.1.1.7", "OT", "", None),
    ],
)
def test_routing(sop_class: str, modality: str, body_part: str, expected) -> None:
    assert route(sop_class, modality, body_part) == expected


def test_daemon_never_imports_tensorflow() -> None:
    code = (
        "import sys, daemon.cli, daemon.lifecycle, daemon.scp, daemon.pipeline, "
        "daemon.reporting, daemon.worklist, phantoms.demo, dicom_io.sr, storage.queries, "
        "model_runtime.classifier, model_runtime.occlusion\n"
        "daemon.cli.build_parser()\n"
        "training = ('tensorflow', 'keras', 'tf2onnx')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in training)\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_all_frames_mode_finds_the_most_urgent_b_scan(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    import numpy as np
    from pydicom import dcmread

    root = write_dicom_studies("oct", tmp_path, 1, seed=81)
    truth = json.loads((root / "lesions.json").read_text())
    relative = next(rel for rel, rec in truth.items() if rec["label"] == "CNV")
    dataset = dcmread(root / relative)
    frames = dataset.pixel_array.copy()
    frames[[0, 2]] = frames[[2, 0]]  # the lesion moves from frame 3 to frame 1
    dataset.PixelData = np.ascontiguousarray(frames).tobytes()
    moved = tmp_path / "moved.dcm"
    dataset.save_as(moved, enforce_file_format=True)

    classifier = Classifier(model_dirs["oct"], device="cpu")
    centre = classify_file(moved, classifier)
    assert (centre.label, centre.frame_number) == ("NORMAL", 3)
    every = classify_file(moved, classifier, all_frames=True)
    assert (every.label, every.frame_number) == ("CNV", 1)


def test_io_binding_gives_the_same_probabilities_as_a_plain_run(
    tiny_model_dirs: dict[str, Path],
) -> None:
    """The I/O-binding path (used on CUDA) on the CPU: same numbers, any batch size,
    and buffers reused between calls do not leak one batch into the next."""
    import threading

    import numpy as np

    plain = Classifier(tiny_model_dirs["oct"], device="cpu", io_binding=False)
    bound = Classifier(tiny_model_dirs["oct"], device="cpu", io_binding=True)
    assert plain.binding is None and bound.binding is not None
    rng = np.random.default_rng(4)
    spec = plain.manifest.input
    for size in (1, 7, 64, 7, 3, 2, 5, 64):
        batch = rng.random((size, spec.height, spec.width, spec.channels), dtype=np.float32)
        expected = plain.predict(batch)
        first = bound.predict(batch)
        again = bound.predict(batch[::-1].copy())
        assert first.shape == (size, len(plain.manifest.labels))
        assert np.allclose(first, expected, atol=1e-6)
        assert np.allclose(again, expected[::-1], atol=1e-6)

    # Threads sharing the classifier each get their own buffers.
    batches = [
        rng.random((8, spec.height, spec.width, spec.channels), dtype=np.float32) for _ in range(4)
    ]
    wanted = [plain.predict(batch) for batch in batches]
    mismatches: list[int] = []

    def work(index: int) -> None:
        for _ in range(20):
            if not np.allclose(bound.predict(batches[index]), wanted[index], atol=1e-6):
                mismatches.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []


def test_padded_batches_give_the_same_probabilities_and_few_shapes(
    model_dirs: dict[str, Path],
) -> None:
    """Padding to powers of two (the CUDA default) on the CPU: the same numbers
    for every batch size, and the model sees only a handful of shapes."""
    import numpy as np

    plain = Classifier(model_dirs["oct"], device="cpu", pad_batches=False)
    padded = Classifier(model_dirs["oct"], device="cpu", pad_batches=True)
    seen: list[int] = []
    run = padded._run

    def counting(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return run(batch)

    padded._run = counting  # type: ignore[method-assign]
    spec = plain.manifest.input
    rng = np.random.default_rng(8)
    for size in range(1, 18):
        batch = rng.random((size, spec.height, spec.width, spec.channels), dtype=np.float32)
        got = padded.predict(batch)
        assert got.shape == (size, len(plain.manifest.labels))
        assert np.allclose(got, plain.predict(batch), atol=1e-5)
    assert sorted(set(seen)) == [1, 2, 4, 8, 16, 32]
