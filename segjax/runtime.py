"""Process set-up that must happen before JAX starts: XLA:CPU flags, huge pages, compile cache.

Entry points call `configure()` before `import jax`. Nothing here imports JAX.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

from segjax.files import write_text

# On XLA:CPU this jaxlib sends single convolutions through its YNNPACK fusion, which is about
# 2x slower than XLA's own convolution on AVX-512 CPUs (measured: scripts/benchmark.py).
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
HUGEPAGES = "glibc.malloc.hugetlb=1"


def cache_dir() -> Path:
    return Path(os.environ.get("SEGJAX_CACHE", Path.home() / ".cache" / "segjax"))


def _flag_supported(flag: str) -> bool:
    """An unknown XLA flag aborts the process, so ask a throwaway process once per jaxlib."""
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return False
    record = cache_dir() / "xla_flags.json"
    known = {}
    if record.exists():
        try:
            known = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            known = {}
    key = f"{version}|{flag}"
    if key not in known:
        env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
        probe = "import jax, jax.numpy as jnp; jnp.ones(2).block_until_ready()"
        result = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, timeout=120
        )
        known[key] = result.returncode == 0
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            write_text(record, json.dumps(known))
        except OSError:
            pass
    return bool(known[key])


DETERMINISTIC = "--xla_gpu_deterministic_ops=true"


def configure(fast_cpu: bool = True, compile_cache: bool = True, deterministic: bool = False):
    """Set XLA:CPU flags and the persistent compilation cache through the environment.

    `deterministic` makes GPU reductions and convolutions deterministic (bitwise resume on a
    GPU, at some speed). The user's own XLA_FLAGS win: a flag they already set is kept.
    """
    # A notebook's inline plotting backend (`!segjax ...` inherits MPLBACKEND=module://...)
    # means nothing to a command that writes PNG files, and matplotlib refuses to import with
    # it where that module is not installed.
    if os.environ.get("MPLBACKEND", "").startswith("module://"):
        del os.environ["MPLBACKEND"]
    if deterministic and "xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DETERMINISTIC}".strip()
    if fast_cpu:
        set_cpu_flags()
    if compile_cache:
        enable_compile_cache()


def set_cpu_flags() -> None:
    """segjax's XLA:CPU flags in XLA_FLAGS (read when JAX starts its backend: a process that
    has computed already keeps its own), beside the user's; none with SEGJAX_DEFAULT_FLAGS=1."""
    if os.environ.get("SEGJAX_DEFAULT_FLAGS") == "1":
        return
    current = os.environ.get("XLA_FLAGS", "")
    for flag in CPU_FLAGS:
        name = flag.split("=")[0]
        if name not in current and _flag_supported(flag):
            current = f"{current} {flag}".strip()
    os.environ["XLA_FLAGS"] = current


def prepare_library() -> None:
    """What a library call sets up before its first computation (`segjax.train` and the
    others, from a notebook): the XLA:CPU flags and the compilation cache."""
    set_cpu_flags()
    enable_compile_cache()


# jaxlib 0.5.x crashes (segmentation fault or abort) while writing CPU executables to the
# persistent cache: 1 to 5 of 8 cold-cache runs of a tiny training with 0.5.1 and 0.5.3;
# 0.6.0, 0.6.2 and 0.7.2 ran 16 to 24 times each without one.
CACHE_MIN_JAXLIB = (0, 6, 0)
CACHE_SETTINGS = {  # every program is worth keeping: the small ones are many
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def _jaxlib_version() -> tuple[int, ...]:
    try:
        text = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def compile_cache_state() -> str:
    """One line for `segjax info`: where compiled programs are kept, or why they are not."""
    if _jaxlib_version() < CACHE_MIN_JAXLIB:
        minimum = ".".join(map(str, CACHE_MIN_JAXLIB))
        return f"off (this jaxlib crashes writing it; {minimum} and newer keep it)"
    import jax

    return jax.config.jax_compilation_cache_dir or "off"


def enable_compile_cache() -> None:
    """Keep compiled programs in `cache_dir()/jax` (unless the user chose a folder), so a second
    run compiles nothing it compiled before.

    jax reads its JAX_* environment variables when it is imported, so once jax is imported
    (the command-line parser imports it for the registries' choices; a notebook has) the same
    settings go through `jax.config`, and a cache that jax already found off is looked for
    again. The environment is set too, for the processes this one starts.
    """
    if _jaxlib_version() < CACHE_MIN_JAXLIB:
        return
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir() / "jax"))
    for name, value in CACHE_SETTINGS.items():
        os.environ.setdefault(name, value)
    if "jax" not in sys.modules:
        return  # jax reads the environment when it is imported
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir:
        return  # set before jax was imported, or by the user
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    seconds = float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", seconds)
    size = int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"])
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", size)
    compilation_cache.reset_cache()  # looked for again at the next compilation


def reexec_with_hugepages() -> None:
    """Restart this process with glibc huge pages for malloc (read only at process start).

    Linux + glibc only; skipped when already set, or when SEGJAX_NO_REEXEC=1.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        not sys.platform.startswith("linux")
        or "glibc.malloc.hugetlb" in tunables
        or os.environ.get("SEGJAX_NO_REEXEC") == "1"
        or os.environ.get("SEGJAX_DEFAULT_FLAGS") == "1"
    ):
        return
    os.environ["GLIBC_TUNABLES"] = f"{tunables}:{HUGEPAGES}" if tunables else HUGEPAGES
    os.environ["SEGJAX_NO_REEXEC"] = "1"  # never loop
    # The command line as typed (a script, `-m segjax` or the `segjax` command), with options.
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
