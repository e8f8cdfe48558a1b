"""The search team's side: open a published version and query it by image, item and text."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_index.schema import version_dir
from pipelines.build_index import run
from search import IndexIntegrityError, ModelMismatchError, PublishedIndex
from search.cli import run as query_cli
from tests.real_images import encode, write_files


def distractors():
    """Real face photos (scikit-image's LFW subset) so the photos are not alone."""
    import skimage.data

    faces = (skimage.data.lfw_subset()[:100] * 255).astype(np.uint8)
    return {f"face-{n:03d}": np.stack([face] * 3, -1) for n, face in enumerate(faces)}


@pytest.fixture(scope="module")
def built(tmp_path_factory, photos, model_cache):
    root = tmp_path_factory.mktemp("search")
    images = {f"{name}.jpg": encode(photo) for name, photo in photos.items()}
    images.update({f"{name}.png": encode(face, "PNG") for name, face in distractors().items()})
    write_files(str(root / "images"), images)
    output = str(root / "index")
    assert run(["--catalog", str(root / "images" / "*"), "--output", output,
                "--num-shards", "3", "--version-id", "v1"]) == 0
    return output, PublishedIndex.open(output)


def altered_copy(photo: np.ndarray) -> bytes:
    """The same product as a shop might re-upload it: cropped a little, smaller, JPEG q=60."""
    image = Image.fromarray(photo)
    w, h = image.size
    image = image.crop((int(w * .04), int(h * .04), int(w * .96), int(h * .96)))
    image = image.resize((int(image.width * .7), int(image.height * .7)), Image.BICUBIC)
    return encode(np.asarray(image), quality=60)


def test_an_indexed_image_finds_itself_first(built, photos):
    _, index = built
    for name in ("coffee", "chelsea", "rocket"):
        hits = index.query_image(encode(photos[name]), k=5)
        assert hits[0].item_id == name and hits[0].score > 0.99


def test_altered_copies_find_their_original(built, photos):
    _, index = built
    found = {name: index.query_image(altered_copy(photo), k=1)[0].item_id == name
             for name, photo in photos.items()}
    assert sum(found.values()) / len(found) >= 0.95, found


def test_merged_shard_results_equal_exact_search(built):
    output, index = built
    folder = version_dir(output, "v1")
    rows = [row for name in sorted(os.listdir(os.path.join(folder, "embeddings")))
            for row in pq.read_table(os.path.join(folder, "embeddings", name)).to_pylist()]
    ids = [row["item_id"] for row in rows]
    vectors = np.asarray([row["vector"] for row in rows], dtype=np.float32)
    assert len(index.shards) == 3 and all(shard.annoy.get_n_items() for shard in index.shards)
    exhaustive = len(ids) * 64
    # the index holds the model's vectors: too few items to learn a projection from
    assert index.projection is None and index.dimension == vectors.shape[1]
    space = vectors
    for query in range(0, len(ids), 7):
        scores = space @ space[query]
        exact = [ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
        merged = index.query_vector(vectors[query], k=10, search_k=exhaustive)
        assert [hit.item_id for hit in merged] == exact
        np.testing.assert_allclose([hit.score for hit in merged],
                                   np.sort(scores)[::-1][:10], atol=1e-4)


def test_more_like_this_leaves_the_item_out(built):
    _, index = built
    hits = index.query_item("coffee", k=5)
    assert len(hits) == 5 and "coffee" not in [hit.item_id for hit in hits]
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_text_query_returns_items_whose_caption_has_the_word(built):
    _, index = built
    cat_items = {item for item in index.item_ids() if "cat" in index.item(item)["caption"].split()}
    assert cat_items  # chelsea is captioned as a cat
    hits = index.query_text("cat", k=10)
    assert {hit.item_id for hit in hits} == cat_items
    assert all("cat" in hit.metadata["caption"] for hit in hits)
    assert index.query_text("the of and", k=10) == []  # only stop words: nothing to match


def test_cli_json_lists_best_first(built, photos, tmp_path, capsys):
    output, _ = built
    path = tmp_path / "query.jpg"
    path.write_bytes(altered_copy(photos["coffee"]))
    assert query_cli(["--index", output, "--image", str(path), "-k", "4", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results[0]["item_id"] == "coffee" and len(results) == 4
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert query_cli(["--index", output, "--item-id", "nope"]) == 1
    assert "nope" in capsys.readouterr().err


@pytest.fixture
def index_copy(built, tmp_path):
    """A copy of the built index root that a test may damage."""
    output, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    return copy


def edit_manifest(root, change) -> None:
    path = root / "versions" / "v1" / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("model_file", ["the version's", "none: loaded by name"])
def test_a_different_model_is_refused(index_copy, photos, tmp_path, capsys, model_file):
    edit_manifest(index_copy, lambda m: m["model"].update(fingerprint="0" * 64))
    if model_file.startswith("none"):
        edit_manifest(index_copy, lambda m: m.pop("query_model"))
    with pytest.raises(ModelMismatchError, match="would not match"):
        PublishedIndex.open(str(index_copy)).query_image(encode(photos["coffee"]))
    image = tmp_path / "q.jpg"
    image.write_bytes(encode(photos["coffee"]))
    assert query_cli(["--index", str(index_copy), "--image", str(image)]) == 1
    err = capsys.readouterr().err.strip()
    assert "would not match" in err and len(err.splitlines()) == 1


def test_a_tampered_shard_is_refused(index_copy):
    shard = index_copy / "versions" / "v1" / "index" / "shard-00001-of-00003.ann"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match="sha256"):
        PublishedIndex.open(str(index_copy))


def test_a_manifest_that_miscounts_a_shard_is_refused(index_copy):
    edit_manifest(index_copy, lambda m: m["index"]["shards"][0].update(
        items=m["index"]["shards"][0]["items"] + 1))
    with pytest.raises(IndexIntegrityError, match="Annoy holds"):
        PublishedIndex.open(str(index_copy))


def test_tampered_metadata_is_refused(index_copy):
    part = index_copy / "versions" / "v1" / "metadata" / "part-00002-of-00003.parquet"
    part.write_bytes(part.read_bytes()[:-1] + b"\0")
    with pytest.raises(IndexIntegrityError, match="metadata/part-00002-of-00003.parquet: sha256"):
        PublishedIndex.open(str(index_copy))


def reference_reader(output, version="v1"):
    """The reader as it was before it kept metadata in Arrow: every row a dict, by annoy id
    per shard, and a BM25 index built on open from the rows in shard order (with today's
    analyzer and field weights)."""
    from annoy import AnnoyIndex
    import bm25s

    import pyarrow as pa

    from catalog_index.text_index import analyze, documents

    folder = version_dir(output, version)
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    shards, rows = [], []
    for shard in manifest["index"]["shards"]:
        annoy = AnnoyIndex(manifest["index"]["dimension"], "angular")
        annoy.load(os.path.join(folder, shard["index_file"]))
        table = pq.read_table(os.path.join(folder, shard["metadata_file"])).to_pylist()
        shards.append((annoy, {row["annoy_id"]: row for row in table}, shard["search_k"]))
        rows.extend(table)
    bm25 = bm25s.BM25()
    bm25.index(documents(pa.Table.from_pylist(rows)), show_progress=False)

    def query_item(item_id, k):
        row = next(row for row in rows if row["item_id"] == item_id)
        vector = np.asarray(shards[row["shard"]][0].get_item_vector(row["annoy_id"]), np.float32)
        vector /= max(float(np.linalg.norm(vector)), 1e-12)
        hits = []
        for annoy, by_id, search_k in shards:
            ids, distances = annoy.get_nns_by_vector(vector, k + 1, search_k=search_k,
                                                     include_distances=True)
            hits += [(1.0 - d * d / 2.0, by_id[i]["item_id"]) for i, d in zip(ids, distances)]
        return [item for score, item in sorted(hits, key=lambda h: (-h[0], h[1]))
                if item != item_id][:k]

    def query_text(text, k):
        query = [[term for term in analyze(text) if term in bm25.vocab_dict]]
        ids, scores = bm25.retrieve(query, k=min(k, len(rows)), show_progress=False)
        return [rows[i]["item_id"] for i, score in zip(ids[0], scores[0]) if score > 0]

    return query_item, query_text


def test_arrow_reader_answers_as_the_dict_reader_did(built):
    output, index = built
    query_item, query_text = reference_reader(output)
    item_ids = list(index.item_ids())
    assert len(item_ids) == len(index) == len(set(item_ids))
    for item_id in item_ids:
        assert [hit.item_id for hit in index.query_item(item_id, k=10)] == \
            query_item(item_id, 10), item_id
        assert index.item(item_id)["item_id"] == item_id
    for text in ("cat", "coffee espresso", "rocket", "face", "gray"):
        assert [hit.item_id for hit in index.query_text(text, k=10)] == query_text(text, 10)
    with pytest.raises(KeyError):
        index.item("no-such-item")


def test_the_text_index_is_a_checksummed_file_of_the_version(built, tmp_path):
    output, _ = built
    folder = version_dir(output, "v1")
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    files = manifest["text_index"]["files"]
    assert files and manifest["text_index"]["documents"] == manifest["counts"]["indexed"]
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    damaged = os.path.join(version_dir(str(copy), "v1"), files[0]["file"])
    with open(damaged, "r+b") as stream:
        stream.seek(os.path.getsize(damaged) // 2)
        stream.write(b"\x00\x01")
    with pytest.raises(IndexIntegrityError, match="sha256"):
        PublishedIndex.open(str(copy))


def test_the_text_index_is_the_same_bytes_in_every_process(tmp_path):
    """Python salts string hashes per process; a vocabulary in set order would differ."""
    import subprocess
    import sys

    script = ("import sys, pyarrow as pa; from catalog_index.text_index import build_text_index; "
              "t = pa.table({'caption': ['red dress', 'blue t-shirt', 'ankle boot'] * 50, "
              "'title': ['Dress', None, 'Ankle boot'] * 50}); build_text_index([t], sys.argv[1])")
    digests = []
    for seed in ("1", "2", "3"):
        folder = tmp_path / seed
        subprocess.run([sys.executable, "-c", script, str(folder)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.getcwd()})
        digests.append({name: open(folder / name, "rb").read() for name in os.listdir(folder)})
    assert digests[0] == digests[1] == digests[2]


# ---------------------------------------------------------------- the version's query model

def embedded_vectors(output, version="v1") -> dict:
    """item_id -> the model vector the build stored in the version's embeddings Parquet."""
    folder = version_dir(output, version)
    return {row["item_id"]: np.asarray(row["vector"], np.float32)
            for name in sorted(os.listdir(os.path.join(folder, "embeddings")))
            for row in pq.read_table(os.path.join(folder, "embeddings", name)).to_pylist()}


def catalog_file(output, name) -> bytes:
    """The bytes of a catalog image exactly as the build read them."""
    return open(os.path.join(os.path.dirname(output), "images", name), "rb").read()


QUERIED = {"coffee": "coffee.jpg", "chelsea": "chelsea.jpg", "face-007": "face-007.png"}


def test_the_version_carries_its_query_model(built):
    output, index = built
    entry = index.manifest["query_model"]
    path = os.path.join(version_dir(output, "v1"), "model", "model.tflite")
    data = open(path, "rb").read()
    assert entry["file"] == "model/model.tflite" and entry["format"] == "tflite"
    assert entry["bytes"] == len(data) > 1_000_000
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["fingerprint"] == index.manifest["model"]["fingerprint"]


def test_a_query_image_gets_the_builds_vector(built):
    """In a process that has imported TensorFlow (the build ran here): tf.lite."""
    output, index = built
    stored = embedded_vectors(output)
    assert index.projection is None  # so the index space is the model's
    for item_id, name in QUERIED.items():
        np.testing.assert_allclose(index.embed_image(catalog_file(output, name)),
                                   stored[item_id], atol=1e-5)
        np.testing.assert_allclose(index.vector(item_id), stored[item_id], atol=1e-5)


EMBED_SCRIPT = """
import json, sys
from search import PublishedIndex
index = PublishedIndex.open(sys.argv[1])
vectors = {name: index.embed_image(open(path, "rb").read()).tolist()
           for name, path in json.loads(sys.argv[2]).items()}
print(json.dumps({"vectors": vectors, "tensorflow": "tensorflow" in sys.modules,
                  "litert": "ai_edge_litert" in sys.modules,
                  "model": type(index.model()).__name__}))
"""


def fresh_process_env() -> dict:
    """The environment of a search team's process: no TF_CPP_MIN_LOG_LEVEL."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def test_a_fresh_reader_embeds_with_litert_as_the_build_did(built):
    """A process without TensorFlow: the version's model file on LiteRT, the build's vectors."""
    output, _ = built
    paths = {item_id: os.path.join(os.path.dirname(output), "images", name)
             for item_id, name in QUERIED.items()}
    done = subprocess.run([sys.executable, "-c", EMBED_SCRIPT, output, json.dumps(paths)],
                          capture_output=True, text=True, env=fresh_process_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no TensorFlow, absl or XNNPACK lines
    answer = json.loads(done.stdout)
    assert answer["model"] == "TFLiteEmbeddingModel"
    assert answer["litert"] is True and answer["tensorflow"] is False
    stored = embedded_vectors(output)
    for item_id, vector in answer["vectors"].items():
        np.testing.assert_allclose(vector, stored[item_id], atol=1e-5)


def imported_modules(importtime_stderr: str) -> set:
    """Top-level names of the modules a ``python -X importtime`` run imported."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0]
            for line in importtime_stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("query", [["--image", "IMAGE"], ["--item-id", "coffee"],
                                   ["--text", "cat"], ["--item-id", "coffee", "--text", "cup"]])
def test_the_query_cli_imports_no_tensorflow_and_prints_no_library_logs(built, query):
    output, _ = built
    query = [os.path.join(os.path.dirname(output), "images", "coffee.jpg") if arg == "IMAGE"
             else arg for arg in query]
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipelines.cli", "query",
                           "--index", output, "-k", "3", *query], capture_output=True,
                          text=True, env=fresh_process_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line for line in done.stderr.splitlines()
            if not line.startswith("import time:")] == []
    modules = imported_modules(done.stderr)
    assert "search" in modules and not modules & {"tensorflow", "keras", "tensorflow_hub"}
    assert ("ai_edge_litert" in modules) == ("--image" in query)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("score: ") and 2 <= len(lines) <= 4


def test_a_version_without_a_query_model_loads_the_builds_model(index_copy, built):
    """Versions built before the model file was written, or of SavedModels."""
    output, _ = built
    edit_manifest(index_copy, lambda m: m.pop("query_model"))
    shutil.rmtree(index_copy / "versions" / "v1" / "model")
    index = PublishedIndex.open(str(index_copy))
    assert index.model().tflite_path  # the build's model, from the conversion cache
    np.testing.assert_allclose(index.embed_image(catalog_file(output, "coffee.jpg")),
                               embedded_vectors(output)["coffee"], atol=1e-5)


def test_a_tampered_query_model_is_refused(index_copy):
    model = index_copy / "versions" / "v1" / "model" / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match="model/model.tflite: sha256"):
        PublishedIndex.open(str(index_copy))


# ---------------------------------------------------------- a reader outlives its version

def answers(index, output) -> dict:
    """Every kind of query, and changes(), as plain values."""
    coffee = catalog_file(output, "coffee.jpg")

    def ids(hits):
        return [(hit.item_id, round(hit.score, 5)) for hit in hits]

    return {"item": ids(index.query_item("coffee", k=5)),
            "text": ids(index.query_text("cat", k=5)),
            "image": ids(index.query_image(coffee, k=5)),
            "image+text": ids(index.query(image=coffee, text="cup", k=5)),
            "changes": index.changes().to_pylist(),
            "row": index.item("chelsea")}


def test_a_reader_keeps_working_after_its_version_folder_is_deleted(built, index_copy):
    output, index = built
    expected = answers(index, output)
    reader = PublishedIndex.open(str(index_copy))
    shutil.rmtree(index_copy / "versions" / "v1")  # pruned under a live reader
    assert not (index_copy / "versions" / "v1").exists()
    # the model is first loaded now, after the delete: from the version's file, mapped at open
    assert answers(reader, output) == expected
    assert expected["text"] and expected["changes"] and len(expected["image"]) == 5


def test_a_gs_reader_keeps_working_without_its_version_or_its_cache(built, gcs_bucket,
                                                                    tmp_path):
    from catalog_index import storage

    output, index = built
    root = f"gs://{gcs_bucket}/index"
    for path in storage.list_files(output):
        storage.upload_file(path, f"{root}/{os.path.relpath(path, output)}")
    cache = tmp_path / "cache"
    reader = PublishedIndex.open(root, cache_dir=str(cache))
    assert reader.local_dir.startswith(str(cache))
    storage.delete_tree(f"{root}/versions/v1")
    shutil.rmtree(cache)
    assert answers(reader, output) == answers(index, output)


# ------------------------------------------------------------------ the query CLI's edges

def test_cli_no_result_says_so_in_one_line(built, capsys):
    output, _ = built
    assert query_cli(["--index", output, "--text", "zeppelin"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("catalog-index query: no results: ")
    assert "zeppelin" in captured.err and len(captured.err.splitlines()) == 1
    assert query_cli(["--index", output, "--text", "zeppelin", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [] and len(captured.err.splitlines()) == 1


@pytest.mark.parametrize("text", ["", "   ", "the of and", "?!"])
def test_cli_refuses_a_text_without_words(built, text, capsys):
    output, _ = built
    for extra in ([], ["--item-id", "coffee"]):
        assert query_cli(["--index", output, "--text", text, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("catalog-index query: error: --text has no words")
        assert len(err.splitlines()) == 1


def test_cli_says_what_the_score_is(built, capsys):
    output, _ = built
    assert query_cli(["--index", output, "--item-id", "coffee", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("score: cosine similarity") and len(lines) == 3
    assert query_cli(["--index", output, "--text", "cat", "-k", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("score: BM25 relevance")
    assert query_cli(["--index", output, "--item-id", "coffee", "--text", "cup",
                      "--text-weight", "0.25"]) == 0
    assert capsys.readouterr().out.startswith("score: 0.75 x cosine similarity + 0.25 x share")


def test_help_has_no_restructuredtext():
    for command in (["query"], ["prune"], ["rollback"], []):
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", *command, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "``" not in done.stdout and ":data:" not in done.stdout
        if command == ["query"]:
            assert "cosine similarity" in done.stdout and "BM25 relevance" in done.stdout
