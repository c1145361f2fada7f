"""A profile's ``image: {oci: ...}``: parsed and checked without pulling (a bad reference, packages
beside it, a kind: vm profile are named by line and field); its summary and boot description."""
from __future__ import annotations

import pytest

import engine


def test_an_oci_profile_parses_without_pulling() -> None:
    profile = engine.parse_profile("name: py\nkind: sandbox\nimage:\n  oci: python:3.11\n  tls_verify: false\n", "py.yaml")
    assert profile.image is not None and (profile.image.oci, profile.image.tls_verify) == ("python:3.11", False)
    assert profile.describe_boot() == "OCI image python:3.11"
    assert profile.to_dict()["image"] == {"oci": "python:3.11"}


@pytest.mark.parametrize(("body", "where"), [
    ("kind: sandbox\nimage:\n  oci: Not/Valid:tag\n", "py.yaml:4: image.oci"),
    ("kind: sandbox\nimage:\n  oci: python:3.11\n  packages: [git]\n", "py.yaml:5: image.packages"),
    ("kind: sandbox\nimage:\n  oci: python:3.11\n  tls_verify: maybe\n", "py.yaml:5: image.tls_verify"),
    ("image:\n  oci: python:3.11\n", "py.yaml:2: image"),
])
def test_oci_profile_mistakes_name_line_and_field(body: str, where: str) -> None:
    with pytest.raises(engine.ProfileError) as caught:
        engine.parse_profile("name: py\n" + body, "py.yaml")
    assert where in str(caught.value), str(caught.value)
