"""The map step's items: a digest the caller computed is taken, never computed twice."""

from __future__ import annotations

import hashlib

import pytest

from retrieval.errors import ImsearchError
from retrieval.ingest import Describer, IngestSettings, SourceItem
from retrieval.models.descriptor import DescriptorModel
from tests import imagefactory as f


def test_a_given_sha256_is_the_records_and_needs_the_bytes() -> None:
    model = DescriptorModel.create("efficientnet_lite0", max_side=96, scales=(1.0,))
    describer = Describer(IngestSettings(), model=model)
    data = f.real_photos(1)[0].read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    computed = describer.describe_one(SourceItem("a", data=data))
    assert computed.image is not None and computed.image.sha256 == digest
    marker = "f" * 64  # not the bytes' digest: shows it is taken as given, not recomputed
    given = describer([SourceItem("b", data=data, sha256=marker)])[0]
    assert given.image is not None and given.image.sha256 == marker
    with pytest.raises(ImsearchError, match="only with the bytes"):
        SourceItem("c", path="/x.jpg", sha256=digest)
