"""Put onnxruntime-web (pinned, from the npm registry, checked against its published sha512)
into examples/web/vendor/, so that the page loads it from its own folder and fetches nothing at
run time.

    python examples/web/vendor.py          # needs npm and the registry once; then offline
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "onnxruntime-web"
VERSION = "1.31.1"
# `npm view onnxruntime-web@1.31.1 dist.integrity`: the tarball's digest, as the registry has it
INTEGRITY = (
    "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7"
    "VsPdSQeS7NmuZPXrQ73k82URw=="
)
# The WebAssembly build (no WebGPU/WebGL): its loader, its module and the module's glue.
FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs")
HERE = Path(__file__).resolve().parent


def vendor(into: Path = HERE / "vendor") -> Path:
    if all((into / name).is_file() for name in FILES) and (into / VERSION).is_file():
        return into
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm is needed once to fetch onnxruntime-web (install Node.js), then not again")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=tmp, check=True)
        (tarball,) = Path(tmp).glob("*.tgz")
        digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if f"sha512-{digest}" != INTEGRITY:
            sys.exit(f"{tarball.name}: its sha512 is not the pinned one; not vendored")
        into.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as archive:
            for name in FILES:
                member = archive.extractfile(f"package/dist/{name}")
                (into / name).write_bytes(member.read())
    (into / VERSION).write_text(f"{PACKAGE} {VERSION} {INTEGRITY}\n")
    return into


if __name__ == "__main__":
    print(f"onnxruntime-web {VERSION} in {vendor()}")
