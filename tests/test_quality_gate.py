"""The quality gate: recall against exact search, failures, count drop, model change."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from catalog_index import ann
from catalog_index.schema import version_dir
from pipelines.build_index import run
from tests.real_images import encode, write_files
from transforms.validate import quality_gate

THRESHOLDS = {"min_recall": 0.95, "max_failure_rate": 0.05, "max_count_drop": 0.10,
              "max_precision_drop": 0.05, "allow_model_change": False}
MODEL = {"fingerprint": "a" * 64, "embedding_dim": 1280}
PREVIOUS = {"version_id": "v1", "indexed": 1000, "model_fingerprint": "a" * 64,
            "embedding_dim": 1280}


def failing(checks):
    return sorted(check["check"] for check in checks if not check["passed"])


def test_gate_passes_a_good_version():
    quality = {"ann_recall_at_10": 0.97, "recall_queries": 1000, "failure_rate": 0.01,
               "indexed_change": -0.02}
    assert failing(quality_gate(quality, THRESHOLDS, MODEL, PREVIOUS)) == []


def test_gate_names_every_failed_check():
    quality = {"ann_recall_at_10": 0.90, "recall_queries": 1000, "failure_rate": 0.2,
               "indexed_change": -0.5}
    changed = {"fingerprint": "b" * 64, "embedding_dim": 512}
    checks = quality_gate(quality, THRESHOLDS, changed, PREVIOUS)
    assert failing(checks) == ["ann_recall_at_10", "failure_rate", "indexed_change",
                               "model_unchanged"]
    assert "--allow-model-change" in next(c["message"] for c in checks
                                          if c["check"] == "model_unchanged")
    allowed = quality_gate(quality, {**THRESHOLDS, "allow_model_change": True}, changed, PREVIOUS)
    assert "model_unchanged" not in failing(allowed)


def test_gate_checks_label_precision_against_the_published_version():
    quality = {"ann_recall_at_10": 0.97, "recall_queries": 1000, "failure_rate": 0.01,
               "indexed_change": 0.0, "label_column": "category", "label_queries": 1000,
               "label_p_at_10": 0.80}
    before = {**PREVIOUS, "quality": {"label_column": "category", "label_p_at_10": 0.87}}
    checks = quality_gate(quality, THRESHOLDS, MODEL, before)
    assert failing(checks) == ["label_precision"]
    found = next(check for check in checks if check["check"] == "label_precision")
    assert (found["value"], found["threshold"]) == (-0.07, -0.05)
    assert found["message"] == ("P@10 of the category labels fell from 0.870 (version v1) to "
                                "0.800, more than the 0.05 allowed; pass --max-precision-drop "
                                "if that is intended")
    assert failing(quality_gate({**quality, "label_p_at_10": 0.83}, THRESHOLDS, MODEL,
                                before)) == []
    assert failing(quality_gate(quality, {**THRESHOLDS, "max_precision_drop": 0.1}, MODEL,
                                before)) == []
    # none measured before: nothing to compare with, and the check says so
    checks = quality_gate(quality, THRESHOLDS, MODEL, {**PREVIOUS, "quality": {}})
    found = next(check for check in checks if check["check"] == "label_precision")
    assert found["passed"] and "nothing measured before" in found["message"]


@pytest.mark.parametrize("tonight, why", [
    ({"label_column": None, "label_p_at_10": None,
      "label_not_measured": "the catalog has no label column (--label-column; by default "
                            "category)"}, "the catalog has no label column"),
    ({"label_column": "category", "label_p_at_10": None,
      "label_not_measured": "no two items of a shard have a category label"},
     "no two items of a shard have a category label"),
    ({"label_column": "brand", "label_p_at_10": 0.99}, "it was measured on brand, not category"),
])
def test_a_night_that_cannot_measure_the_published_labels_is_a_drop(tonight, why):
    """The catalog lost its label column, the column is empty, or another one is named: the
    published version's P@10 cannot be compared, and that is a drop to 0, not a pass."""
    quality = {"ann_recall_at_10": 0.97, "recall_queries": 1000, "failure_rate": 0.01,
               "indexed_change": 0.0, **tonight}
    before = {**PREVIOUS, "quality": {"label_column": "category", "label_p_at_10": 0.724}}
    checks = quality_gate(quality, THRESHOLDS, MODEL, before)
    assert failing(checks) == ["label_precision"]
    found = next(check for check in checks if check["check"] == "label_precision")
    assert found["value"] == -0.724 and why in found["message"]
    assert "--max-precision-drop 1" in found["message"]
    assert failing(quality_gate(quality, {**THRESHOLDS, "max_precision_drop": 1.0}, MODEL,
                                before)) == []


def test_a_gate_that_cannot_run_says_so():
    quality = {"ann_recall_at_10": 0.97, "recall_queries": 1000, "failure_rate": 0.01,
               "label_column": None, "label_p_at_10": None,
               "label_not_measured": "the catalog has no label column"}
    found = next(check for check in quality_gate(quality, THRESHOLDS, MODEL, None)
                 if check["check"] == "label_precision")
    assert found["passed"] and found["value"] is None
    assert found["message"] == "label precision not measured: the catalog has no label column"


def test_a_first_version_reports_its_label_precision_but_no_change():
    quality = {"ann_recall_at_10": 0.97, "recall_queries": 1000, "failure_rate": 0.01,
               "label_column": "category", "label_p_at_10": 0.9}
    found = next(check for check in quality_gate(quality, THRESHOLDS, MODEL, None)
                 if check["check"] == "label_precision")
    assert found["passed"] and found["value"] is None  # the report's column is a change
    assert found["message"] == ("P@10 of the category labels is 0.900 (nothing measured "
                                "before to compare with)")


def test_passing_checks_say_what_passed_and_failing_ones_what_failed():
    good = {"ann_recall_at_10": 0.997, "recall_queries": 1000, "failure_rate": 0.0,
            "indexed_change": 0.01, "ranked_share": 1.0, "rank_queries": 1000}
    messages = {check["check"]: check["message"]
                for check in quality_gate(good, THRESHOLDS, MODEL, PREVIOUS)}
    assert messages["ann_recall_at_10"] == "Annoy recall@10 0.997 reaches the 0.950 target " \
                                           "(1,000 queries)"
    assert not any("below" in text or "more than" in text or "fewer" in text
                   for text in messages.values()), messages
    bad = {**good, "ann_recall_at_10": 0.9, "failure_rate": 0.2, "indexed_change": -0.5,
           "ranked_share": 0.0}
    messages = {check["check"]: check["message"]
                for check in quality_gate(bad, THRESHOLDS, MODEL, PREVIOUS)}
    assert "is below the 0.950 target" in messages["ann_recall_at_10"]
    assert "more than the 5.0% allowed" in messages["failure_rate"]
    assert "cannot rank" in messages["space_ranks"]


def test_label_hits_count_neighbours_that_share_the_label():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 32)) * 4
    classes = np.arange(400) % 4
    vectors = (centres[classes] + rng.normal(size=(400, 32))).astype(np.float32)
    index = ann.build_annoy(vectors, 8, seed=1)
    labels = [f"class-{c}" if n // 4 % 2 == 0 else None for n, c in enumerate(classes)]
    asked, judged, hits = ann.label_hits(index, labels, range(100), search_k=-1)
    assert asked == 52 and 0.4 * 52 * ann.K < judged < 0.6 * 52 * ann.K  # half have a label
    assert hits == judged  # separated classes: every labelled neighbour agrees
    shuffled = list(rng.permutation(np.array(labels, dtype=object)))
    asked, judged, hits = ann.label_hits(index, shuffled, range(400), search_k=-1)
    assert asked == 200 and 0.15 < hits / judged < 0.35  # 1 in 4 by chance
    assert ann.label_hits(index, [None] * 400, range(400), search_k=-1) == (0, 0, 0)


def test_the_ranking_and_kept_neighbours_of_a_space():
    """A space ranks a query when its nearest stand out from a typical item: collapsed
    vectors (all zero, all one direction) rank none; a projection keeps a share of the
    model space's neighbourhoods: most for PCA, next to none for one onto 2 random axes."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(600, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = list(range(0, 600, 3))
    assert ann.tune_shard(vectors, 8, 42, 0.95, 200).ranked == 200
    for collapsed in (np.zeros_like(vectors), np.repeat(vectors[:1], 600, axis=0)):
        tuned = ann.tune_shard(collapsed, 8, 42, 0.95, 200)
        assert (tuned.ranked, tuned.judged) == (0, 200)
    kept, judged = ann.neighbours_kept(vectors, vectors @ np.linalg.qr(
        rng.normal(size=(64, 48)))[0], queries)
    assert judged == 2000 and kept / judged > 0.5
    kept, _ = ann.neighbours_kept(vectors, vectors @ rng.normal(size=(64, 2)), queries)
    assert kept / judged < 0.1
    gate = {check["check"]: check for check in quality_gate(
        {"ann_recall_at_10": 1.0, "recall_queries": 200, "failure_rate": 0.0,
         "neighbours_kept": kept / judged}, THRESHOLDS, MODEL, None)}
    assert not gate["neighbours_kept"]["passed"]


def test_exact_neighbours_match_a_plain_sort():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = ann.exact_neighbours(vectors, [0, 7, 299], k=10)
    for row, query in zip(exact, [0, 7, 299]):
        scores = vectors @ vectors[query]
        scores[query] = -np.inf
        assert row.tolist() == np.argsort(-scores)[:10].tolist()


def test_tuning_reaches_the_target_at_the_lowest_search_k():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 64)).astype(np.float32)  # hard: no structure at all
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tuned = ann.tune_shard(vectors, n_trees=8, seed=42, target_recall=0.95, queries=200)
    assert tuned.recall >= 0.95 and tuned.queries == 200
    assert tuned.search_k > tuned.n_trees * ann.K  # Annoy's default would not have done it
    query_ids = ann.query_sample(len(vectors), 200)
    exact = ann.exact_neighbours(vectors, query_ids)
    smaller = tuned.search_k // 2
    if smaller >= tuned.n_trees * ann.K:
        assert ann.recall(ann.annoy_neighbours(tuned.index, query_ids, smaller), exact) < 0.95


def test_a_search_k_hint_saves_measurements_and_changes_nothing(monkeypatch):
    """An incremental build starts from the previous version's search_k: recall does not
    fall as search_k grows, so going down from a hint finds what going up from 1 does."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    measured = []
    count = ann.annoy_neighbours
    monkeypatch.setattr(ann, "annoy_neighbours", lambda index, ids, search_k, k=ann.K: (
        measured.append(search_k), count(index, ids, search_k, k))[1])
    plain = ann.tune_shard(vectors, n_trees=8, seed=42, target_recall=0.95, queries=200)
    steps = len(measured)
    assert steps >= 3  # 1, 2, ... up to the answer
    for multiplier in ann.SEARCH_K_MULTIPLIERS + (3, 1000):
        measured.clear()
        hinted = ann.tune_shard(vectors, n_trees=8, seed=42, target_recall=0.95, queries=200,
                                hint=8 * ann.K * multiplier)
        assert (hinted.search_k, hinted.n_trees, hinted.recall) == \
            (plain.search_k, plain.n_trees, plain.recall), multiplier
    measured.clear()
    ann.tune_shard(vectors, n_trees=8, seed=42, target_recall=0.95, queries=200,
                   hint=plain.search_k)
    assert measured == [plain.search_k, plain.search_k // 2]


def test_failing_gate_keeps_latest_and_exits_non_zero(tmp_path, photos, model_cache, capsys):
    good = write_files(str(tmp_path / "good"), {
        f"{name}.jpg": encode(photo) for name, photo in list(photos.items())[:10]})
    output = str(tmp_path / "index")
    assert run(["--catalog", str(tmp_path / "good" / "*.jpg"), "--output", output,
                "--num-shards", "2", "--version-id", "v1"]) == 0
    manifest = json.load(open(os.path.join(version_dir(output, "v1"), "manifest.json")))
    assert manifest["quality"]["ann_recall_at_10"] >= 0.95
    assert all(shard["search_k"] >= shard["n_trees"] * 10 for shard in manifest["index"]["shards"])

    # The next night, half the catalog is broken files.
    write_files(str(tmp_path / "good"), {f"broken-{n}.jpg": b"not a jpeg" for n in range(6)})
    capsys.readouterr()
    assert run(["--catalog", str(tmp_path / "good" / "*.jpg"), "--output", output,
                "--num-shards", "2", "--version-id", "v2"]) == 1
    assert open(os.path.join(output, "LATEST")).read().strip() == "v1"
    assert "of the input failed" in capsys.readouterr().err
    report = json.load(open(os.path.join(version_dir(output, "v2"), "report.json")))
    assert not report["validation"]["passed"]
    assert [c["check"] for c in report["validation"]["gate"] if not c["passed"]] == ["failure_rate"]
    assert os.path.exists(os.path.join(version_dir(output, "v2"), "manifest.json"))  # kept
    assert len(good) == 10

    # Rolling back refuses the failed version unless forced, and accepts a good one.
    from pipelines.rollback import run as rollback

    assert rollback(["--index", output, "--version", "v2"]) == 1
    assert "failed validation" in capsys.readouterr().err
    assert rollback(["--index", output, "--version", "nope"]) == 1
    assert rollback(["--index", output, "--version", "v2", "--force"]) == 0
    assert open(os.path.join(output, "LATEST")).read().strip() == "v2"
    assert rollback(["--index", output, "--version", "v1"]) == 0
    assert open(os.path.join(output, "LATEST")).read().strip() == "v1"
