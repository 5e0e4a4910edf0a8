"""genrm-jax: generative reward models (LLM judges) and Bradley-Terry baselines in JAX."""
from setuptools import find_packages, setup

SERVE = ["starlette>=1.0", "uvicorn>=0.30"]  # python -m genrm_jax.serve: an ASGI app on uvicorn

setup(
    name="genrm-jax",
    version="0.1.0",
    description="Generative reward models (GenRM, CoT-GenRM, STaR) and Bradley-Terry baselines in JAX",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["genrm_jax", "genrm_jax.*", "experiments", "experiments.*"]),
    package_data={"genrm_jax": ["data/*", "data/**/*"]},
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "transformers>=4.45",
        "sentencepiece>=0.2",
        "tensorflow-datasets>=4.9.7",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "safetensors>=0.4",
        "gguf>=0.10",
        "numpy>=1.26",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        # torch is only a reference for parity tests and benchmarks; 2.13.0 is the local CPU wheel.
        # accelerate: transformers' own GGUF loader; the serve extra: tests start a real server;
        # pytest-xdist: `make test` runs one worker per core (the suite is mostly compile-bound, single-threaded)
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "accelerate>=1.0", *SERVE],
        "serve": SERVE,
        "cuda": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
