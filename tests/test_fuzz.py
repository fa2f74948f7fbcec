"""Property-based fuzzing of the C-STORE gate with mutated datasets.

Whatever bytes arrive, ``parse_header`` either accepts a dataset or raises
``IngestError`` with a failure status; it never raises anything else (which
would abort the association) and never accepts an image that claims more
pixels than it carries.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread

from daemon.validate import dataset_offset, parse_header
from domain.errors import IngestError
from phantoms.files import write_dicom_studies

ROOT = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str, str]:
    path = sorted(
        write_dicom_studies("oct", tmp_path_factory.mktemp("fuzz"), 1, seed=99).rglob("*.dcm")
    )[0]
    header = dcmread(path, stop_before_pixels=True)
    return path.read_bytes(), str(header.SOPInstanceUID), str(header.SOPClassUID)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**7), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**7), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**7), st.integers(0, 255)),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_datasets_are_accepted_or_refused_cleanly(
    valid: tuple[bytes, str, str], mutations: list[tuple[str, int, int]]
) -> None:
    content, uid, sop_class = valid
    data = bytearray(content)
    # Mutate the dataset, mostly its header where the structure lives.
    start = dataset_offset(content)
    for kind, position, value in mutations:
        span = min(len(data) - start, 4096)
        if span <= 0:
            break
        where = start + position % span
        if kind == "flip":
            data[where] ^= value
        elif kind == "truncate":
            del data[where:]
        else:
            data.insert(where, value)
    try:
        dataset = parse_header(bytes(data), uid, sop_class, "1.2.840.10008.1.2.1")
    except IngestError as exc:
        assert 0xA900 <= exc.status <= 0xCFFF
        return
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    needed = dataset.Rows * dataset.Columns * frames * (dataset.BitsAllocated // 8)
    assert len(dataset.PixelData) >= needed
