"""models/projection.py: PCA (+ LDA from labels) fitted on a sample, deterministic to the
byte, applied the same way to catalog vectors and to queries."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os

import numpy as np
import pytest

from models import projection


def clustered(count=2000, dim=64, classes=5, seed=0):
    """Unit vectors: class means on a few axes, buried in isotropic noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    means = rng.normal(size=(classes, dim)) * 0.2
    vectors = means[labels] + rng.normal(size=(count, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), [f"class-{n}" for n in labels]


def precision_at_10(vectors, labels):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argsort(-scores, axis=1)[:, :10]
    labels = np.asarray(labels)
    return float((labels[top] == labels[:, None]).mean())


def test_the_same_sample_gives_the_same_bytes():
    vectors, labels = clustered()
    first = projection.fit(vectors, 16, labels, "category").to_bytes()
    assert projection.fit(vectors.copy(), 16, list(labels), "category").to_bytes() == first
    other = vectors.copy()
    other[0, 0] += 1e-3
    assert projection.fit(other, 16, labels, "category").to_bytes() != first


def test_the_fit_is_the_same_bytes_whatever_threads_blas_may_use():
    """A Dask worker runs BLAS on one thread, a local build on every core: LAPACK's
    eigendecomposition split over two threads gave other last bits, so other index bytes."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)  # a sample on which the two did differ
    vectors = rng.standard_normal((2000, 1280)).astype(np.float16)
    labels = [str(n % 10) for n in range(2000)]
    found = set()
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            found.add(projection.fit(vectors, 256, labels, "category").to_bytes())
    assert len(found) == 1


def test_pca_keeps_the_variance_of_low_rank_data_and_is_unit_length():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(64, 8)))[0]
    vectors = (rng.normal(size=(500, 8)) * np.arange(8, 0, -1)) @ basis.T + 3.0
    fitted = projection.fit(vectors, 8)
    assert fitted.explained_variance > 0.999999 and fitted.dims == 8
    assert fitted.lda.shape == (64, 0) and fitted.label_column is None
    projected = fitted.apply(vectors)
    assert projected.shape == (500, 8) and projected.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-6)
    # cosine in the projected space = cosine of the centred vectors (nothing was lost)
    centred = vectors - vectors.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(projected @ projected.T, centred @ centred.T, atol=1e-4)


def test_labels_add_directions_that_separate_them():
    vectors, labels = clustered()
    plain = projection.fit(vectors[:1000], 8)
    labelled = projection.fit(vectors[:1000], 8, labels[:1000], "category")
    assert labelled.dims == 8 + 4 and labelled.label_column == "category"
    # measured on the other half, which the fit did not see
    held_out, truth = vectors[1000:], labels[1000:]
    raw = precision_at_10(held_out, truth)
    assert precision_at_10(labelled.apply(held_out), truth) > \
        max(raw, precision_at_10(plain.apply(held_out), truth)) + 0.05


def test_items_without_a_label_count_for_pca_only():
    vectors, labels = clustered()
    some = [label if n % 2 else None for n, label in enumerate(labels)]
    fitted = projection.fit(vectors, 8, some, "category")
    assert fitted.lda.shape[1] == 4 and fitted.sample_size == 2000
    assert projection.fit(vectors, 8, [None] * 2000, "category").lda.shape[1] == 0


def test_a_query_is_projected_as_the_catalog_was():
    vectors, labels = clustered()
    fitted = projection.fit(vectors, 16, labels, "category")
    loaded = projection.Projection.from_bytes(fitted.to_bytes())
    assert loaded.summary() == fitted.summary()
    np.testing.assert_allclose(loaded.apply(vectors[7]), fitted.apply(vectors)[7], atol=1e-7)


def test_drift_is_about_one_for_items_like_the_sample_and_large_for_others():
    from transforms.projection import DriftFn, needs_refit

    rng = np.random.default_rng(1)
    basis = rng.normal(size=(8, 64))
    vectors = (rng.normal(size=(3000, 8)) @ basis + rng.normal(size=(3000, 64)) * 0.3)
    fitted = projection.fit(vectors[:2000], 8)  # the sample spreads along 8 directions
    drift = DriftFn(fitted)

    def measured(items):
        halves = [drift.create_accumulator(), drift.create_accumulator()]
        for n, vector in enumerate(items):  # two bundles, merged
            halves[n % 2] = drift.add_input(halves[n % 2], {"embedding": vector})
        return drift.extract_output(drift.merge_accumulators(halves))

    alike = measured(vectors[2000:])
    assert alike["items"] == 1000 and 0.9 < alike["ratio"] < 1.1
    assert not needs_refit(alike)
    elsewhere = vectors[2000:] + rng.normal(size=(1000, 64))  # spread it never had
    apart = measured(elsewhere)
    assert apart["ratio"] > projection.DRIFT_THRESHOLD and needs_refit(apart)
    few = measured(elsewhere[:projection.MIN_DRIFT_ITEMS - 1])
    assert few["ratio"] > projection.DRIFT_THRESHOLD and not needs_refit(few)
    assert not needs_refit(None)


def test_an_unknown_file_format_is_refused():
    vectors, _ = clustered(count=50)
    stored = dict(np.load(io.BytesIO(projection.fit(vectors, 4).to_bytes())))
    stored["format"] = np.array(99)
    buffer = io.BytesIO()
    np.savez(buffer, **stored)
    with pytest.raises(ValueError, match="format 99"):
        projection.Projection.from_bytes(buffer.getvalue())


# ----------------------------------------------------------------- in the build and reader

@pytest.fixture(scope="module")
def projected_builds(tmp_path_factory, photos, model_cache):
    """Builds of the same photos with --dims 4 (20 photos: 4 items a dimension at least): a, b (--full: fitted again), c (nightly:
    b's projection carried forward), d (nightly, with as many images of noise added: they
    drift, so it is fitted again); then one with --dims 0."""
    from pipelines.build_index import run
    from tests.real_images import encode, write_files

    root = tmp_path_factory.mktemp("projected")
    write_files(str(root / "images"), {f"{name}.jpg": encode(photo)
                                       for name, photo in photos.items()})
    output = str(root / "index")
    common = ["--output", output, "--num-shards", "2"]
    photos_only = ["--catalog", str(root / "images" / "*.jpg")]
    codes = [run(photos_only + common + ["--dims", "4", "--version-id", "a"]),
             run(photos_only + common + ["--dims", "4", "--version-id", "b", "--full"]),
             run(photos_only + common + ["--dims", "4", "--version-id", "c"])]
    noise = np.random.default_rng(0)
    write_files(str(root / "images"), {
        f"{name}-noise.png": encode(noise.integers(0, 256, photo.shape, np.uint8), "PNG")
        for name, photo in photos.items()})
    with pytest.MonkeyPatch.context() as patch:  # a test catalog has fewer new items
        patch.setattr(projection, "MIN_DRIFT_ITEMS", 1)
        patch.setattr("transforms.projection.MIN_DRIFT_ITEMS", 1)
        codes.append(run(["--catalog", str(root / "images" / "*")] + common
                         + ["--dims", "4", "--version-id", "d"]))
    codes.append(run(photos_only + common + ["--dims", "0", "--version-id", "raw", "--full",
                             "--max-count-drop", "0.5"]))
    return root, output, codes


def _version_file(output, version, relative):
    from catalog_index.schema import version_dir

    return os.path.join(version_dir(output, version), relative)


def test_a_projected_build_indexes_narrow_vectors_and_queries_project_alike(projected_builds):
    from catalog_index.schema import PROJECTION_FILE
    from search.index import PublishedIndex

    root, output, codes = projected_builds
    assert codes == [0, 0, 0, 0, 0]
    index = PublishedIndex.open(output, version="a")
    entry = index.manifest["projection"]
    assert entry["file"] == PROJECTION_FILE and entry["dims"] == 4 == index.dimension
    assert entry["sample_size"] == len(index) and entry["label_column"] is None
    assert 0 < entry["explained_variance"] < 1
    assert entry["settings"] == {"dims": 4, "label_column": None}
    assert entry["origin"] == {"fitted": "sample"}
    with open(_version_file(output, "a", PROJECTION_FILE), "rb") as stream:
        assert hashlib.sha256(stream.read()).hexdigest() == entry["sha256"]
    some = next(index.item_ids())
    assert index.vector(some).shape == (4,)
    # a photo finds itself first: the query went through the same projection
    for name in ("coffee", "chelsea", "rocket"):
        image = open(os.path.join(root, "images", f"{name}.jpg"), "rb").read()
        hits = index.query_image(image, k=3)
        assert hits[0].item_id == name and hits[0].score > 0.999
    # a model vector (an image embedded elsewhere) is projected on the way in
    model_vector = index.model().predict(np.zeros((1, 224, 224, 3), np.float32)).embeddings[0]
    assert [hit.item_id for hit in index.query_vector(model_vector, k=3)] == \
        [hit.item_id for hit in index.query_vector(index.projection.apply(model_vector), k=3)]
    raw = PublishedIndex.open(output, version="raw")
    assert raw.manifest["projection"] is None and raw.dimension == 1280


def test_projected_rebuilds_are_byte_identical(projected_builds):
    """b was fitted again on the same sample (--full), c carried b's forward."""
    from catalog_index.schema import PROJECTION_FILE

    _, output, _ = projected_builds
    for relative in (PROJECTION_FILE, "index/shard-00000-of-00002.ann",
                     "index/shard-00001-of-00002.ann"):
        first = open(_version_file(output, "a", relative), "rb").read()
        for version in ("b", "c"):
            assert open(_version_file(output, version, relative), "rb").read() == first, \
                (version, relative)


def _manifest(output, version):
    import json

    return json.loads(open(_version_file(output, version, "manifest.json")).read())


def test_a_nightly_build_keeps_the_published_projection_until_new_items_drift(
        projected_builds):
    _, output, _ = projected_builds
    b, c, d = (_manifest(output, version)["projection"] for version in "bcd")
    assert b["origin"] == {"fitted": "sample"}
    # nothing new: nothing drifts, b's projection is carried, no sample is read
    assert c["origin"] == {"carried_from": "b", "drift": {
        "items": 0, "ratio": 0.0, "threshold": projection.DRIFT_THRESHOLD}}
    assert c["sha256"] == b["sha256"]
    # noise lies far from the photos' subspace: fitted again, on a sample that holds the
    # reused photos (their vectors read from version c) and the new images
    photos = _manifest(output, "c")["counts"]["indexed"]
    assert d["origin"]["fitted"] == "drift"
    assert d["origin"]["drift"]["items"] == photos
    assert d["origin"]["drift"]["ratio"] > projection.DRIFT_THRESHOLD
    assert d["sample_size"] == 2 * photos and d["sha256"] != c["sha256"]


def test_a_changed_space_shows_in_changes_and_the_manifest(projected_builds):
    """A refit on drift gives every item another vector: a consumer who follows changes/
    must learn it, or it mixes two vector spaces. Each otherwise unchanged item is listed as
    vector_changed, and the manifest says the space changed; a carried projection does
    not change it."""
    from search.index import PublishedIndex

    _, output, codes = projected_builds
    assert codes[:4] == [0, 0, 0, 0]
    spaces = {version: _manifest(output, version)["index"] for version in "bcd"}
    assert spaces["c"]["space"] == spaces["b"]["space"] and spaces["c"]["space_changed"] is False
    assert spaces["d"]["space"] != spaces["c"]["space"] and spaces["d"]["space_changed"] is True
    changes = PublishedIndex.open(output, version="d").changes().to_pylist()
    kinds = {row["change"] for row in changes}
    photos = _manifest(output, "c")["counts"]["indexed"]
    assert sorted(row["item_id"] for row in changes if row["change"] == "vector_changed") == \
        sorted(PublishedIndex.open(output, version="c").item_ids())
    assert kinds == {"added", "vector_changed"} and len(changes) == 2 * photos
    counts = _manifest(output, "d")["counts"]
    assert (counts["added"], counts["vector_changed"]) == (photos, photos)
    gate = {check["check"]: check for check in _manifest(output, "d")["validation"]["gate"]}
    assert gate["index_space"]["passed"] and "changed since version c" in \
        gate["index_space"]["message"]
    assert not any(row["change"] == "vector_changed" for row in
                   PublishedIndex.open(output, version="c").changes().to_pylist())


def test_a_projection_file_that_differs_from_the_manifest_is_refused(projected_builds,
                                                                     tmp_path, capsys):
    import shutil

    from catalog_index.schema import PROJECTION_FILE
    from search.index import IndexIntegrityError, PublishedIndex

    root, output, _ = projected_builds
    copy = str(tmp_path / "index")
    shutil.copytree(output, copy)
    fitted = projection.Projection.from_bytes(
        open(_version_file(copy, "a", PROJECTION_FILE), "rb").read())
    other = dataclasses.replace(fitted, mean=fitted.mean + np.float32(0.01))
    with open(_version_file(copy, "a", PROJECTION_FILE), "wb") as stream:
        stream.write(other.to_bytes())
    with pytest.raises(IndexIntegrityError, match="projection.npz: sha256 differs"):
        PublishedIndex.open(copy, version="a")
    # a nightly build would carry it forward: it stops first, in one line
    from pipelines.build_index import run

    with open(os.path.join(copy, "LATEST"), "w") as stream:
        stream.write("a\n")
    assert run(["--catalog", str(root / "images" / "*.jpg"), "--output", copy, "--dims", "4",
                "--num-shards", "2"]) == 2
    message = capsys.readouterr().err.strip().splitlines()
    assert message == [f"catalog-index build: error: version a: cannot use its projection "
                       f"({PROJECTION_FILE} does not match the sha256 in its manifest); "
                       "build with --full to fit a new one"]


# ------------------------------------------------- labelled products: what the labels buy

@pytest.fixture(scope="module")
def labelled_builds(tmp_path_factory, model_cache):
    """Fashion-MNIST products, 40 of each class, a category on every other one: built with
    --dims 0 (raw), then with --dims 64 (400 items: enough for 64 dimensions, not for the
    default 256) on top of it, then with --dims 0 again."""
    from PIL import Image

    from pipelines.build_index import run
    from pipelines.demo import FASHION_CLASSES, load_fashion_mnist

    root = tmp_path_factory.mktemp("labelled")
    images, labels = load_fashion_mnist("t10k")
    truth, rows = {}, []
    for label, name in enumerate(FASHION_CLASSES):
        for rank, index in enumerate(np.flatnonzero(labels == label)[:40]):
            item_id = f"fm-{index:05d}"
            Image.fromarray(images[index]).save(root / f"{item_id}.png")
            rows.append(f"{item_id},{root / item_id}.png,{name if rank % 2 == 0 else ''}")
            truth[item_id] = name
    (root / "catalog.csv").write_text("item_id,image_uri,category\n" + "\n".join(rows) + "\n")
    output = str(root / "index")
    common = ["--catalog", str(root / "catalog.csv"), "--output", output, "--num-shards", "1"]
    codes = [run(common + ["--dims", "0", "--version-id", "raw"]),
             run(common + ["--dims", "64", "--version-id", "projected"]),
             run(common + ["--dims", "0", "--version-id", "raw-again"])]
    return output, truth, codes


def test_labels_lift_the_precision_of_items_without_one(labelled_builds):
    """The issue's claim at a small scale, on real product images: the items WITHOUT a
    category find more of their own class through query_item with a projection (PCA + LDA
    from the other half's categories) than with the model's raw vectors."""
    from search.index import PublishedIndex

    output, truth, codes = labelled_builds
    assert codes[:2] == [0, 0]
    precision = {}
    for version in ("raw", "projected"):
        index = PublishedIndex.open(output, version=version)
        queries = [item for item in sorted(truth) if
                   not index.item(item)["category"]]
        assert len(queries) == 200
        precision[version] = np.mean([truth[hit.item_id] == truth[item] for item in queries
                                      for hit in index.query_item(item, k=10)])
    entry = PublishedIndex.open(output, version="projected").manifest["projection"]
    assert (entry["pca_dims"], entry["lda_dims"], entry["label_column"]) == (64, 9, "category")
    assert precision["projected"] >= precision["raw"] + 0.03, precision


def test_the_gate_refuses_a_version_whose_labels_lose_precision(labelled_builds, capsys):
    """Each version measures how often a labelled item's nearest share its label; going back
    to raw vectors loses what the LDA part gave, and the gate says so."""
    output, _, codes = labelled_builds
    quality = {version: _manifest(output, version)["quality"]
               for version in ("raw", "projected", "raw-again")}
    assert quality["raw"]["label_column"] == "category"
    assert quality["raw"]["label_queries"] == 200
    assert quality["projected"]["label_p_at_10"] > quality["raw"]["label_p_at_10"] + 0.05
    assert quality["raw-again"]["label_p_at_10"] == quality["raw"]["label_p_at_10"]
    assert codes[2] == 1  # not published
    gate = {check["check"]: check for check in
            _manifest(output, "raw-again")["validation"]["gate"]}
    assert not gate["label_precision"]["passed"]
    assert gate["label_precision"]["value"] == round(
        quality["raw"]["label_p_at_10"] - quality["projected"]["label_p_at_10"], 6)


def test_a_night_that_loses_the_label_column_is_not_published(labelled_builds, capsys):
    """The catalog's export dropped its category column: the projection would lose its LDA
    part and the gate its label precision. A gate that cannot run says so, and a lost
    label column is a drop like any other: not published, LATEST unchanged."""
    from pipelines.build_index import run

    output, truth, _ = labelled_builds
    root = os.path.dirname(output)
    rows = open(os.path.join(root, "catalog.csv")).read().splitlines()[1:]
    (open(os.path.join(root, "no-category.csv"), "w")
     .write("item_id,image_uri\n" + "\n".join(",".join(row.split(",")[:2]) for row in rows)))
    latest = open(os.path.join(output, "LATEST")).read()
    capsys.readouterr()
    assert run(["--catalog", os.path.join(root, "no-category.csv"), "--output", output,
                "--num-shards", "1", "--dims", "64", "--version-id", "no-labels"]) == 1
    err = capsys.readouterr().err
    assert "P@10 of the category labels cannot be measured (the catalog has no label " \
           "column" in err and "--max-precision-drop 1" in err, err
    assert open(os.path.join(output, "LATEST")).read() == latest
    quality = _manifest(output, "no-labels")["quality"]
    assert quality["label_p_at_10"] is None and quality["label_column"] is None


def _crafted_projection(output, version, kind):
    """A projection file that opens (finite, full rank, shapes right) but whose space cannot
    serve: ``far`` has a mean so far away that every vector lands on the same direction,
    ``line`` maps the vectors onto one axis (every pair scores +1 or -1)."""
    import glob

    import pyarrow.parquet as pq

    vectors = np.concatenate([np.stack(pq.read_table(path).column("vector").to_pylist())
                              for path in sorted(glob.glob(_version_file(
                                  output, version, "embeddings/*.parquet")))])
    good = projection.fit(vectors, 16)
    if kind == "far":
        far = np.zeros(vectors.shape[1], np.float32)
        far[0] = 1e4
        crafted = dataclasses.replace(good, mean=far)
    else:
        crafted = dataclasses.replace(good, pca=good.pca[:, :1])
    crafted.check()  # it passes every check a file gets when it is opened
    return crafted.to_bytes()


@pytest.mark.parametrize("kind, check, says", [
    ("far", "space_ranks", "the index space cannot rank"),
    ("line", "space_ranks", "the index space cannot rank")])
def test_a_projection_whose_space_cannot_rank_is_not_published_on_a_fresh_root(
        labelled_builds, tmp_path, kind, check, says, capsys):
    """No earlier version to compare with: the gate still notices a space in which the
    nearest items do not stand out (every hit scores the same), or one that has lost the
    catalog's neighbourhoods, and publishes nothing."""
    from pipelines.build_index import run

    output, _, _ = labelled_builds
    crafted = tmp_path / f"{kind}.npz"
    crafted.write_bytes(_crafted_projection(output, "projected", kind))
    fresh = str(tmp_path / "fresh")
    capsys.readouterr()
    assert run(["--catalog", os.path.join(os.path.dirname(output), "catalog.csv"), "--output",
                fresh, "--num-shards", "1", "--projection-from", str(crafted),
                "--version-id", "crafted"]) == 1
    err = capsys.readouterr().err
    assert "not published" in err and says in err, err
    assert not os.path.exists(os.path.join(fresh, "LATEST"))
    gate = {entry["check"]: entry for entry in
            _manifest(fresh, "crafted")["validation"]["gate"]}
    assert not gate[check]["passed"]


def _broken_projections(tmp_path, good: bytes):
    """Files --projection-from may be given that are not a usable projection."""
    fitted = projection.Projection.from_bytes(good)
    missing = io.BytesIO()
    np.savez(missing, format=np.array(1), mean=fitted.mean)
    files = {"truncated.npz": good[: len(good) // 2], "empty.npz": b"",
             "text.npz": b"item_id,image_uri\n", "missing-arrays.npz": missing.getvalue(),
             "zeros.npz": dataclasses.replace(fitted, pca=np.zeros_like(fitted.pca)).to_bytes(),
             "one-direction.npz": dataclasses.replace(
                 fitted, pca=np.repeat(fitted.pca[:, :1], fitted.pca.shape[1], axis=1)).to_bytes(),
             "nan.npz": dataclasses.replace(
                 fitted, mean=np.full_like(fitted.mean, np.nan)).to_bytes(),
             "weight.npz": dataclasses.replace(fitted, lda_weight=1.5).to_bytes(),
             "other-width.npz": projection.fit(np.eye(40, 32, dtype=np.float32), 4).to_bytes()}
    paths = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = str(tmp_path / name)
    (tmp_path / "not-a-version").mkdir()
    paths["not-a-version"] = str(tmp_path / "not-a-version")
    (tmp_path / "list-manifest").mkdir()
    (tmp_path / "list-manifest" / "manifest.json").write_text("[1, 2]")
    paths["list-manifest"] = str(tmp_path / "list-manifest")
    return paths


def test_a_broken_projection_file_is_one_line_and_nothing_is_written(labelled_builds, tmp_path,
                                                                     capsys):
    from pipelines.build_index import run

    output, _, _ = labelled_builds
    good = open(_version_file(output, "projected", "projection/projection.npz"), "rb").read()
    catalog = os.path.join(os.path.dirname(output), "catalog.csv")
    for name, path in _broken_projections(tmp_path, good).items():
        fresh = str(tmp_path / f"out-{name}")
        capsys.readouterr()
        assert run(["--catalog", catalog, "--output", fresh, "--projection-from", path]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            f"catalog-index build: error: --projection-from {path}: "), (name, err)
        assert "Traceback" not in err[0] and not os.path.exists(os.path.join(fresh, "versions"))
