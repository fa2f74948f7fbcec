"""ONNX Runtime classifiers, one per model package.

The CUDA execution provider is used when it loads; otherwise the CPU. The
onnxruntime-gpu package offers CUDA even where CUDA 13 and cuDNN 9 are
missing, then falls back with a logged error, so the provider actually in
use is read back from the session and a fallback is said once, plainly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from domain.errors import InferenceError
from domain.triage import Classification
from model_runtime.device_binding import DeviceBinding
from model_runtime.package import Manifest, load_package
from model_runtime.preprocess import model_input

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_fallback_reported = threading.Event()


def create_session(model_path: Path, device: str) -> tuple[ort.InferenceSession, str]:
    """Open ``model_path`` on the best provider ``device`` allows.

    Returns the session and the name of the provider it runs on.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    wants_cuda = device in ("auto", "cuda") and CUDA in ort.get_available_providers()
    if device == "cuda" and not wants_cuda:
        raise InferenceError(
            'models.device is "cuda" but this onnxruntime build has no CUDA provider '
            "(the CPU build is installed: install dicom-triage with the gpu extra)."
        )
    providers = [CUDA, CPU] if wants_cuda else [CPU]
    # A CUDA provider that does not load is said once, below, in our words;
    # the entry point keeps ONNX Runtime's own multi-line message out
    # (daemon.cli.process.quiet_onnxruntime), never this library code.
    try:
        session = ort.InferenceSession(str(model_path), options, providers=providers)
    except Exception as exc:
        raise InferenceError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc
    active = session.get_providers()[0]
    if wants_cuda and active != CUDA:
        if device == "cuda":
            raise InferenceError(
                'models.device is "cuda" but the CUDA provider did not load '
                "(onnxruntime-gpu 1.31 needs the NVIDIA driver, and CUDA 13 and cuDNN 9: "
                "the gpu extra's nvidia-* wheels bring those)."
            )
        if not _fallback_reported.is_set():
            _fallback_reported.set()
            logger.warning(
                "The CUDA execution provider could not be loaded (onnxruntime-gpu needs the "
                "NVIDIA driver, and CUDA 13 and cuDNN 9, which the gpu extra's nvidia-* wheels "
                "bring); inference runs on the CPU instead."
            )
    return session, active


def provider_reason(provider: str, device: str) -> str:
    """Why inference runs where it does, for the start-up log."""
    if provider == CUDA:
        return "the CUDA provider loaded"
    if device == "cpu":
        return 'models.device is "cpu"'
    if CUDA not in ort.get_available_providers():
        return "ONNX Runtime's CPU build is installed (the gpu extra brings the CUDA one)"
    return "the CUDA provider did not load (see the warning above)"


class Classifier:
    """A verified model package, ready to classify grey images."""

    def __init__(
        self,
        package_dir: Path,
        device: str = "auto",
        io_binding: bool | None = None,
        pad_batches: bool | None = None,
    ) -> None:
        """Load and verify a model package.

        ``io_binding``: run through ONNX Runtime I/O binding (device-resident
        buffers); by default whenever the session runs on CUDA.
        ``pad_batches``: pad each batch with blank rows to the next power of
        two; by default on CUDA, where every new batch shape makes cuDNN
        search its convolution algorithms again (about 1.4 s for InceptionV3
        on an H200), and micro-batches come in every size.
        """
        self.manifest: Manifest
        self.manifest, model_path = load_package(Path(package_dir))
        self.session, self.provider = create_session(model_path, device)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != self.manifest.input.tensor_name:
            raise InferenceError(
                f"{model_path} must have one input named {self.manifest.input.tensor_name!r}."
            )
        outputs = self.session.get_outputs()
        if outputs[0].shape[-1] not in (len(self.manifest.labels), None, "unk__0"):
            raise InferenceError(
                f"{model_path} outputs {outputs[0].shape[-1]} classes but the manifest "
                f"lists {len(self.manifest.labels)}."
            )
        self.pad_batches = self.provider == CUDA if pad_batches is None else pad_batches
        use_binding = self.provider == CUDA if io_binding is None else io_binding
        self.binding = (
            DeviceBinding(
                self.session,
                len(self.manifest.labels),
                device="cuda" if self.provider == CUDA else "cpu",
            )
            if use_binding
            else None
        )

    def prepare(self, image: np.ndarray) -> np.ndarray:
        spec = self.manifest.input
        return model_input(image, spec.height, spec.width, spec.channels, spec.scaling)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a prepared NHWC batch."""
        count = len(batch)
        if self.pad_batches and count & (count - 1):
            padded = np.zeros((1 << count.bit_length(), *batch.shape[1:]), dtype=batch.dtype)
            padded[:count] = batch
            return self._run(padded)[:count]
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.binding is not None:
            return self.binding.run(batch)
        probabilities = self.session.run(None, {self.manifest.input.tensor_name: batch})[0]
        return np.asarray(probabilities, dtype=np.float32)

    def classify(self, image: np.ndarray, frame_number: int | None = None) -> Classification:
        """Classify one grey image in [0, 1] (any size)."""
        return self.classify_many([image], [frame_number])[0]

    def classify_many(
        self, images: Sequence[np.ndarray], frame_numbers: Sequence[int | None]
    ) -> list[Classification]:
        """Classify several images in one batch (the frames of a volume)."""
        started = time.perf_counter()
        batch = np.stack([self.prepare(image) for image in images])
        rows = self.predict(batch)
        elapsed_ms = (time.perf_counter() - started) * 1000 / max(len(images), 1)
        return self.classifications(rows, frame_numbers, elapsed_ms)

    def classifications(
        self, rows: np.ndarray, frame_numbers: Sequence[int | None], inference_ms: float
    ) -> list[Classification]:
        """One Classification per row of class probabilities."""
        results = []
        for probabilities, frame_number in zip(rows, frame_numbers, strict=True):
            best = int(np.argmax(probabilities))
            label = self.manifest.labels[best]
            results.append(
                Classification(
                    modality=self.manifest.modality.value,
                    label=label,
                    referral=self.manifest.referral_of(label),
                    probability=float(probabilities[best]),
                    probabilities={
                        name: float(p)
                        for name, p in zip(self.manifest.labels, probabilities, strict=True)
                    },
                    model_name=self.manifest.name,
                    model_version=self.manifest.version,
                    model_sha256=self.manifest.onnx_sha256,
                    execution_provider=self.provider,
                    inference_ms=inference_ms,
                    frame_number=frame_number,
                )
            )
        return results
