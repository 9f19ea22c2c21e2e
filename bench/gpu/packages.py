"""What the GPU machine's Python provides, what the kit carries there as wheels, and the check
that the two together cover every third-party import of hope_mega/ and bench/.

The machine's image (CPython 3.12, x86_64 Linux, its own CUDA torch) cannot reach a package
index, so whatever the project imports and the image lacks travels as a wheel (bench/gpu/wheels.txt,
fetched by bench/gpu/fetch_wheels.py, which records each wheel's files and Requires-Dist in
bench/gpu/wheels.lock). `missing()` answers offline; tests/bench/test_gpu_kit.py runs it.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WHEELS_TXT = HERE / "wheels.txt"
WHEELS_LOCK = HERE / "wheels.lock"

# The interpreter and platform the wheels are for.
PYTHON_VERSION = "3.12"
PLATFORM = "x86_64 Linux (glibc)"

# Distributions installed in the GPU machine's image ('cuda'), as listed for it on 2026-11-17.
IMAGE_PACKAGES = sorted("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

# Import names of image distributions whose import name is not the distribution name with '-'
# turned into '_' (only the ones that matter for a project like this one; the rest follow the rule).
IMAGE_IMPORT_NAMES = {
    "absl-py": ["absl"],
    "attrs": ["attr", "attrs"],
    "cupy-cuda13x": ["cupy"],
    "markdown-it-py": ["markdown_it"],
    "nvidia-ml-py": ["pynvml"],
    "opencv-python-headless": ["cv2"],
    "pillow": ["PIL"],
    "protobuf": ["google"],
    "py-cpuinfo": ["cpuinfo"],
    "python-dateutil": ["dateutil"],
    "pyyaml": ["yaml"],
    "scikit-image": ["skimage"],
    "scikit-learn": ["sklearn"],
    "tensorboard-data-server": ["tensorboard_data_server"],
}

# Third-party imports of hope_mega/ and bench/ that the kit leaves out on purpose, with the reason.
NOT_CARRIED = {
    "wandb": "imported only inside MetricsLogger when train.wandb_project is set (hope_mega/metrics.py); "
             "the kit never sets it, and wandb with its dependencies is tens of MB",
}

# Wheels installed without their metadata's dependencies, as .ci/requirements-nodeps.lock installs
# them, and the runtime needs that stand in for that metadata (pyproject.toml lists the same).
RUNTIME_NEEDS = {
    "mosaicml-streaming": ["brotli", "catalogue", "numpy", "pillow", "python-snappy", "torch", "tqdm",
                           "xxhash", "zstd"],
}

# Requires-Dist entries the check leaves out, with the reason (none at present).
IGNORED_REQUIRES: dict[str, str] = {}

# Where wheels.txt departs from .ci/requirements.lock / requirements-nodeps.lock, and why.
LOCK_DEVIATIONS = {
    "zstd": "the lock's 1.5.7.2 is published as an sdist only (no cp312 wheel); 1.5.6.1 is the newest cp312 "
            "wheel that is not yanked",
}
CI_LOCKS = (ROOT / ".ci" / "requirements.lock", ROOT / ".ci" / "requirements-nodeps.lock")


def ci_lock_versions() -> dict[str, str]:
    """name -> version pinned by the project's CPU locks."""
    out = {}
    for path in CI_LOCKS:
        for line in path.read_text().splitlines():
            spec = line.split("#", 1)[0].strip()
            if "==" in spec:
                name, version = spec.split("==", 1)
                out[normalize(name)] = version.strip()
    return out


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def image_import_names() -> dict[str, str]:
    """import name -> image distribution."""
    out = {}
    for dist in IMAGE_PACKAGES:
        for mod in IMAGE_IMPORT_NAMES.get(dist, [dist.replace("-", "_")]):
            out[mod] = dist
    return out


def read_wheels_txt(path: Path = WHEELS_TXT) -> list[dict]:
    """[{name, version, build}] from wheels.txt: `name==version [build]  # comment` per line."""
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *flags = line.split()
        name, sep, version = spec.partition("==")
        if not sep or not version:
            raise ValueError(f"{path}: {raw!r}: expected name==version")
        unknown = set(flags) - {"build"}
        if unknown:
            raise ValueError(f"{path}: {raw!r}: unknown flag(s) {sorted(unknown)}")
        out.append({"name": normalize(name), "version": version, "build": "build" in flags})
    return out


def read_lock(path: Path = WHEELS_LOCK) -> dict:
    return json.loads(path.read_text())


def project_imports(roots=("hope_mega", "bench"), root: Path = ROOT) -> dict[str, list[str]]:
    """Top-level modules imported anywhere under `roots` (absolute imports only) -> the files
    importing them, without the standard library and the project's own modules (hope_mega, and
    scripts importable from their own folder, e.g. bench/quality.py imported as `quality`)."""
    found: dict[str, set[str]] = {}
    for top in roots:
        for path in sorted((root / top).rglob("*.py")):
            local = {p.stem for p in path.parent.glob("*.py")}
            for mod in imports_of(path.read_text(), str(path)):
                if mod in sys.stdlib_module_names or mod in ("__future__", "hope_mega") or mod in local:
                    continue
                found.setdefault(mod, set()).add(str(path.relative_to(root)))
    return {k: sorted(v) for k, v in sorted(found.items())}


def imports_of(source: str, filename: str = "<source>") -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
    return mods


def _marker_env() -> dict:
    major, minor = PYTHON_VERSION.split(".")
    return {"python_version": PYTHON_VERSION, "python_full_version": f"{PYTHON_VERSION}.3",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "os_name": "posix", "extra": ""}


def runtime_requirements(requires: list[str]) -> list[str]:
    """Normalized names of the Requires-Dist entries that apply on the GPU machine (no extras)."""
    from packaging.requirements import Requirement

    env = _marker_env()
    out = []
    for text in requires:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        out.append(normalize(req.name))
    return sorted(set(out))


def missing(imports: dict[str, list[str]] | None = None, lock: dict | None = None,
            wheels: list[dict] | None = None) -> list[str]:
    """Every way the image plus the carried wheels fall short, as one line each ([] = complete):
    an import neither provides, a wheel's runtime requirement neither provides, a wheel listed in
    wheels.txt but not in wheels.lock (or at another version), a wheel that would replace the
    image's torch, triton or CUDA libraries, two versions of one package."""
    imports = project_imports() if imports is None else imports
    lock = read_lock() if lock is None else lock
    wheels = read_wheels_txt() if wheels is None else wheels
    problems = []
    locked = {normalize(w["name"]): w for w in lock["wheels"]}
    listed = {w["name"]: w for w in wheels}
    if len(listed) != len(wheels):
        problems.append("wheels.txt lists a package twice (two versions stop the install)")
    for name, w in listed.items():
        if name in ("torch", "triton") or name.startswith("nvidia-"):
            problems.append(f"wheels.txt: {name} would replace the image's own CUDA build")
        if name not in locked:
            problems.append(f"wheels.txt: {name}=={w['version']} is not in wheels.lock (run bench/gpu/fetch_wheels.py)")
        elif locked[name]["version"] != w["version"]:
            problems.append(f"wheels.lock: {name} is {locked[name]['version']}, wheels.txt asks for {w['version']}")
    for name in locked:
        if name not in listed:
            problems.append(f"wheels.lock: {name} is not in wheels.txt")
    provided = dict(image_import_names())
    for name, w in locked.items():
        for mod in w["provides"]:
            provided[mod] = name
    for mod, files in imports.items():
        if mod not in provided and mod not in NOT_CARRIED:
            problems.append(f"import {mod} ({', '.join(files[:3])}): neither the GPU image nor a wheel in "
                            f"bench/gpu/wheels.txt provides it")
    available = {normalize(p) for p in IMAGE_PACKAGES} | set(locked)
    for name, w in locked.items():
        needs = RUNTIME_NEEDS.get(name)
        if needs is None:
            needs = [r for r in runtime_requirements(w["requires"]) if r not in IGNORED_REQUIRES]
        for req in needs:
            if normalize(req) not in available:
                problems.append(f"{name} requires {req}: neither the GPU image nor a wheel in bench/gpu/wheels.txt has it")
    return problems


if __name__ == "__main__":
    problems = missing()
    print("\n".join(problems) or "complete: every import and runtime requirement is provided")
    sys.exit(1 if problems else 0)
