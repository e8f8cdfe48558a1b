"""Shared fixtures. Every test runs with outbound network blocked: only loopback
connections (the GCS emulator) are allowed, so any hidden run-time download fails loudly."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class NetworkBlocked(OSError):
    pass


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # a unix socket path
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    if not _is_loopback(address):
        raise NetworkBlocked(f"test tried to reach the network: {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_loopback(address):
        raise NetworkBlocked(f"test tried to reach the network: {address!r}")
    return _real_connect_ex(self, address)


def pytest_configure(config):
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex


# Test tiers (pytest.ini): a test is marked by what it needs, from its fixtures or its own
# mark; what needs none of these is a unit test (make test-fast runs those).
TIER_FIXTURES = {"e2e": {"model_cache", "keras_model", "tflite_model"},
                 "dask": {"dask_cluster"}, "gcs": {"gcs_emulator", "gcs_bucket"}}
SLOW_TIERS = ("e2e", "dask", "gcs", "airflow")


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(item.fixturenames)
        for tier, needs in TIER_FIXTURES.items():
            if fixtures & needs:
                item.add_marker(tier)
        if not any(item.get_closest_marker(tier) for tier in SLOW_TIERS):
            item.add_marker("unit")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """A cache dir shared by the session (one conversion), unless the user set one."""
    path = os.environ.get("CATALOG_INDEX_CACHE") or str(tmp_path_factory.mktemp("model-cache"))
    os.environ["CATALOG_INDEX_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def keras_model(model_cache):
    from models.loader import load_model

    return load_model("efficientnet_lite0", runtime="keras", cache_dir=model_cache)


@pytest.fixture(scope="session")
def tflite_model(model_cache, keras_model):
    from models.loader import load_model

    return load_model("efficientnet_lite0", runtime="tflite", cache_dir=model_cache)


@pytest.fixture(scope="session")
def dask_cluster(model_cache):
    """A dask.distributed scheduler and two worker processes on loopback, for the session;
    the workers share the session's model cache. Every process is stopped at the end."""
    pytest.importorskip("distributed")
    from tests.dask_cluster import DaskCluster

    cluster = DaskCluster(workers=2)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def photos():
    from tests.real_images import real_photos

    return real_photos()


@pytest.fixture(scope="session")
def gcs_emulator():
    """A fake-gcs-server process for the session; the clients point at it."""
    from catalog_index import storage
    from runners.beam_gcs import use_anonymous_beam_credentials
    from tests.gcs_emulator import GcsEmulator

    emulator = GcsEmulator()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    storage.gcs_client.cache_clear()
    use_anonymous_beam_credentials()
    yield emulator
    emulator.stop()
    storage.gcs_client.cache_clear()
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture
def gcs_bucket(gcs_emulator, request):
    """A fresh bucket per test, named after it."""
    from catalog_index import storage

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50]
    name = name.strip("-")
    storage.gcs_client().create_bucket(name)
    return name
