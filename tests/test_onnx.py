"""ONNX: `segjax export --format onnx` writes a model whose onnxruntime probabilities equal
segjax's (within onnx_export.TOLERANCE) for the model kinds users train; submit and predict run
on it with the same resizing, TTA and post-processing; and a page in headless Chromium runs it
with onnxruntime-web and draws the mask segjax draws."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import metrics
from segjax.config import InferenceOptions, ModelConfig
from segjax.data import layout
from segjax.inference import masks, onnx_export, rle, submission
from segjax.inference.run_loader import load_run
from segjax.models import apply
from segjax.models.builder import create_model

pytest.importorskip("jax2onnx", reason="pip install -e '.[onnx]' (Python 3.11+, jax 0.8.1+)")
pytest.importorskip("onnxruntime", reason="pip install onnxruntime")
pytestmark = pytest.mark.slow  # conversions take seconds each

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "examples" / "web"


@pytest.mark.parametrize(
    "model",
    [
        ModelConfig(encoder="efficientnet-lite0", encoder_weights="none", features=8),
        ModelConfig(encoder="scratch", features=4, depth=2, upsample="transpose"),
        ModelConfig(encoder="scratch", arch="attn", features=4, depth=2),
        # a timm-layout encoder with squeeze-excitation (its ReduceMean needs opset 18)
        ModelConfig(encoder="efficientnet-b0", encoder_weights="none", features=4),
    ],
    ids=["lite0-unet", "scratch-unet", "scratch-attn", "effb0-unet"],
)
def test_onnxruntime_gives_segjax_probabilities(model, tmp_path):
    """Random weights and images, flip TTA on: onnxruntime's probabilities equal the jitted
    function's within the stated float32 tolerance (check_against_segjax)."""
    net = create_model(model)
    h, w = 64, 48
    variables = jax.jit(lambda k: net.init(k, jnp.zeros((1, h, w, 3)), train=False))(
        jax.random.key(0)
    )
    fn = functools.partial(
        apply.predict_probs, variables, apply_fn=net.apply, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    fn = functools.partial(fn, tta=True)
    batch = jax.export.symbolic_shape("batch")[0]
    proto = onnx_export._convert(fn, jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8))
    path = tmp_path / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    error = onnx_export.check_against_segjax(path, fn, (3, h, w, 3))
    assert error <= onnx_export.TOLERANCE


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    """The conftest's trained run exported to <run>/model.onnx by the command's own path."""
    from segjax.cli import main

    out = trained_run / "model.onnx"
    if not out.exists():
        main(["export", "--format", "onnx", "--run-dir", str(trained_run), "--out", str(out)])
    return out


def test_submit_on_onnxruntime_equals_jax_up_to_threshold_pixels(exported, trained_run, tmp_path):
    """The same rows; the masks differ only where a probability is within the tolerance of
    the threshold (counted, expected none or a handful)."""
    quiet = InferenceOptions(progress=False)
    a = submission.make_submission(trained_run, quiet, out=tmp_path / "jax.csv")
    onnx = InferenceOptions(progress=False, backend="onnxruntime")
    b = submission.make_submission(trained_run, onnx, out=tmp_path / "onnx.csv")
    assert a.rows == b.rows
    test = layout.discover(Path(load_run(trained_run).config.data.data_dir)).test
    from PIL import Image

    sizes = {s.id: Image.open(s.image).size[::-1] for s in test}
    rows = lambda p: dict(line.split(",", 1) for line in p.read_text().splitlines()[1:])
    first, second = rows(a.path), rows(b.path)
    assert list(first) == list(second)
    differing = sum(
        int(np.sum(rle.decode(first[i], sizes[i]) != rle.decode(second[i], sizes[i])))
        for i in first
    )
    total = sum(h * w for h, w in sizes.values())
    print(f"pixels that differ between the backends: {differing} of {total}")
    assert differing <= 1e-4 * total


def test_onnx_refusals_are_named(exported, trained_run, tmp_path):
    exported_tta = json.loads(Path(f"{exported}.json").read_text())["tta"]
    with pytest.raises(onnx_export.UserError, match="exported with TTA"):
        other = not exported_tta  # the model's TTA is fixed when it is exported
        options = InferenceOptions(progress=False, backend="onnxruntime", tta=other)
        submission.make_submission(trained_run, options, out=tmp_path / "tta.csv")
    with pytest.raises(onnx_export.UserError, match="no ONNX model .* segjax export --format"):
        options = InferenceOptions(backend="onnxruntime", onnx=str(tmp_path / "none.onnx"))
        masks.predict_masks(trained_run, [np.zeros((20, 20, 3), np.uint8)], options)


def _serve(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a page, given the page's own time to finish (virtual time)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    quiet = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    quiet += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    command = [binary, *quiet, f"--user-data-dir={profile}", "--virtual-time-budget=120000"]
    return subprocess.run([*command, *extra, url], capture_output=True, text=True, timeout=300)


def test_the_web_page_draws_the_mask_segjax_draws(exported, trained_run, tmp_path):
    """examples/web served on 127.0.0.1 with the exported model; headless Chromium loads the
    bundled photo: the page's mask agrees with segjax.predict's (Dice >= 0.99)."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("no chromium here (Debian: apt-get install chromium)")
    import runpy

    script = runpy.run_path(str(WEB / "vendor.py"))
    if not ((WEB / "vendor" / script["VERSION"]).is_file() or shutil.which("npm")):
        pytest.skip("onnxruntime-web not vendored and no npm to fetch it once (Node.js)")
    vendor = script["vendor"]
    site = tmp_path / "site"
    shutil.copytree(WEB, site, ignore=shutil.ignore_patterns("vendor", "model.onnx*"))
    shutil.copytree(vendor(), site / "vendor")
    for suffix in ("", ".json"):
        shutil.copy(f"{exported}{suffix}", site / f"model.onnx{suffix}")
    server = _serve(site)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html?image=photo.png"
        page = chromium(url, tmp_path / "profile", "--dump-dom")
    finally:
        server.shutdown()
    found = re.search(r'<pre id="mask">(\d+) (\d+) ([A-Za-z0-9+/=]*)</pre>', page.stdout)
    assert found, page.stdout[-2000:] + page.stderr[-2000:]
    h, w = int(found.group(1)), int(found.group(2))
    bits = np.unpackbits(np.frombuffer(base64.b64decode(found.group(3)), np.uint8))
    theirs = bits[: h * w].reshape(h, w)
    (ours,) = masks.predict_masks(trained_run, [WEB / "photo.png"], InferenceOptions())
    counts = metrics.confusion_counts_np(theirs.astype(bool), ours.astype(bool))
    dice = float(metrics.per_image_dice(counts[None])[0])
    assert ours.shape == (h, w) and dice >= 0.99, dice
