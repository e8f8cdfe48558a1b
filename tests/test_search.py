"""The search team's side: open a published version and query it by image, item and text."""

from __future__ import annotations

import json
import os
import shutil

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


def test_a_different_model_is_refused(index_copy, photos, tmp_path, capsys):
    edit_manifest(index_copy, lambda m: m["model"].update(fingerprint="0" * 64))
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
