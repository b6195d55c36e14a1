"""Container and conda files, checked statically (Docker and Apptainer cannot run here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
APPTAINER = REPO / "docker" / "clods-pl.def"
ENV_FILE = REPO / "environment.yml"
CONDA_REQUIRED = ("python", "pytorch", "pytorch-cuda", "pytorch3d")
PIP_REQUIRED = (
    "gsplat",
    "dgl",
    "lightning",
    "jsonargparse",
    "torchmetrics",
    "wandb",
    "pandas",
    "imageio",
    "matplotlib",
    "tqdm",
    "filelock",
)
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]+\])?==?([0-9][0-9A-Za-z.\-+]*)$")


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_tag(ref: str) -> str:
    return ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""


def test_dockerfile() -> None:
    ins = dockerfile_instructions(DOCKERFILE.read_text())
    first = [w for w, _ in ins if w != "ARG"][0]
    assert first == "FROM", "FROM must come first (only ARG may precede it)"
    for word, args in ins:
        if word == "FROM":
            tag = image_tag(args.split()[0])
            assert tag and tag != "latest", f"base image {args} needs a fixed tag"
            assert "cuda" in args
        if word == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            for src in parts[:-1]:
                assert (REPO / src).exists(), f"COPY source {src} does not exist in the build context"
    entry = [a for w, a in ins if w == "ENTRYPOINT"]
    assert entry and '"clods-pl"' in entry[-1]
    run = " ".join(a for w, a in ins if w == "RUN")
    assert "environment.yml" in run and "conda env create" in run
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+", args["MINIFORGE_VERSION"].strip('"'))  # pinned installer
    assert "latest" not in DOCKERFILE.read_text().lower()


def test_apptainer_definition() -> None:
    text = APPTAINER.read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", text, flags=re.M))
    assert header["Bootstrap"] in ("docker", "docker-daemon", "localimage")
    assert image_tag(header["From"]) not in ("", "latest")
    sections = re.findall(r"^%(\w+)", text, flags=re.M)
    for needed in ("files", "post", "environment", "runscript"):
        assert needed in sections, f"%{needed} missing"
    runscript = text.split("%runscript", 1)[1].split("\n%", 1)[0]
    assert 'exec clods-pl "$@"' in runscript
    files = text.split("%files", 1)[1].split("\n%", 1)[0]
    for line in files.strip().splitlines():
        src = line.split()[0]
        assert (REPO / src).exists(), f"%files source {src} does not exist"
    assert "conda env create -f environment.yml" in text


def test_environment_yml() -> None:
    env = yaml.safe_load(ENV_FILE.read_text())
    assert env["name"] == "clods-pl"
    assert {"pytorch", "pytorch3d", "nvidia", "conda-forge"} <= set(env["channels"])
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned_conda = {}
    for spec in conda:
        name, _, version = spec.partition("=")
        assert version, f"conda dependency {spec} is not pinned"
        pinned_conda[name] = version
    for name in CONDA_REQUIRED:
        assert name in pinned_conda, name
    assert pinned_conda["python"] == "3.11"
    pinned_pip = {}
    for spec in pip:
        if spec.startswith("-"):  # options: --find-links URL, -e .
            continue
        m = PIN.match(spec)
        assert m and "==" in spec, f"pip dependency {spec} is not pinned with =="
        pinned_pip[m.group(1)] = m.group(3)
    for name in PIP_REQUIRED:
        assert name in pinned_pip, name
    assert pinned_pip["gsplat"] == "1.5.3"
    assert "-e ." in pip
    assert any("jsonargparse[signatures]" in s for s in pip)


@pytest.mark.parametrize(
    "name",
    [
        "torch",
        "lightning",
        "jsonargparse",
        "torchmetrics",
        "wandb",
        "dgl",
        "pandas",
        "numpy",
        "pillow",
        "imageio",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "filelock",
    ],
)
def test_environment_covers_install_requires(name: str) -> None:
    """Every runtime dependency in setup.cfg is in environment.yml (conda or pip section)."""
    text = ENV_FILE.read_text().lower()
    aliases = {"torch": "pytorch="}
    assert aliases.get(name, name) in text
    setup = (REPO / "setup.cfg").read_text().lower()
    assert re.search(rf"^\s+{re.escape(name)}\b", setup, flags=re.M), f"{name} is not in setup.cfg install_requires"
