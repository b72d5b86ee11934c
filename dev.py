#!/usr/bin/env python3
"""Set up a local virtualenv, build pyengine into it, and run the demo or the tests.

    python3 dev.py demo [demo args...]    # e.g. python3 dev.py demo --model lenet5
    python3 dev.py test [pytest args...]

The first run creates .venv/, installs the build and runtime dependencies from
PyPI and builds the compiled kernels (an editable meson-python install in
build/cp<ver>/, rebuilt automatically on import after a source change). Later
runs reuse it. Only python3, pip and a C compiler are needed on the machine.
"""

import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
BIN = os.path.join(VENV, "Scripts" if os.name == "nt" else "bin")
PY = os.path.join(BIN, "python")
STAMP = os.path.join(VENV, ".pyengine-setup")
BUILD_DEPS = ["meson-python>=0.17", "meson>=1.4", "ninja", "Cython>=3.1",
              "numpy>=2.0", "scipy>=1.13"]
SETUP_INPUTS = ["pyproject.toml", "meson.build", "meson.options",
                "engine/meson.build", "dev.py"]


def run(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def setup_fingerprint():
    h = hashlib.sha256(sys.version.encode())
    for name in SETUP_INPUTS:
        path = os.path.join(ROOT, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def ensure_venv():
    if not os.path.exists(PY):
        print(f"creating virtualenv in {VENV}", flush=True)
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except Exception as exc:  # e.g. Debian python3 without python3-venv
            print(f"venv failed ({exc}); trying virtualenv", flush=True)
            run([sys.executable, "-m", "pip", "install", "--user", "virtualenv"])
            run([sys.executable, "-m", "virtualenv", VENV])
    want = setup_fingerprint()
    if os.path.exists(STAMP) and open(STAMP).read() == want:
        return
    pip = [PY, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run(pip + ["--upgrade", "pip"])
    run(pip + BUILD_DEPS)
    # Editable install: imports rebuild changed kernels (needs the build deps
    # in the venv, hence --no-build-isolation).
    build_dir = f"build/cp{sys.version_info[0]}{sys.version_info[1]}"
    run(pip + ["--no-build-isolation", f"-Cbuild-dir={build_dir}", "-e", ".[test]"])
    with open(STAMP, "w") as f:
        f.write(want)


def main(argv):
    if not argv or argv[0] not in ("demo", "test", "setup", "bench"):
        print(__doc__)
        return 2
    ensure_venv()
    cmd, rest = argv[0], argv[1:]
    env = dict(os.environ)
    if cmd == "demo":
        return subprocess.call([PY, "-m", "pyengine", "demo", *rest], cwd=ROOT, env=env)
    if cmd == "test":
        return subprocess.call([PY, "-m", "pytest", "tests", *rest], cwd=ROOT, env=env)
    if cmd == "bench":
        return subprocess.call([PY, "-m", "pyengine", "bench", *rest], cwd=ROOT, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
