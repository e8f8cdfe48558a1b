"""Validate: check the written version against what the pipeline counted, run the quality
gate, and assemble the manifest. Nothing is read back here: the Report stage opens the
version through the search side's reader, which checks every shard's sha256 and item count
against this manifest before anything is published. Nothing is published here either;
:mod:`transforms.publish` acts on the verdict."""

from __future__ import annotations

import datetime
from importlib import metadata as package_metadata
from typing import Optional

import apache_beam as beam

from catalog_index.schema import ANNOY_METRIC, DUPLICATE_STAGE, SCHEMA_VERSION, index_space


def count_errors_by_stage(errors):
    """errors -> one dict {stage: count}."""
    return (errors
            | "StageOfError" >> beam.Map(lambda row: (row["stage"], 1))
            | "CountByStage" >> beam.CombinePerKey(sum)
            | "AsOneDict" >> beam.combiners.ToDict())


class _ValidateVersion(beam.DoFn):
    def __init__(self, build: dict):
        self.build = build  # version_id, version_dir, model, index options, source, options

    def process(self, _unused, shards, num_shards, input_count, errors_by_stage, _errors_written,
                text_index, runtime, projection, query_model):
        build = self.build
        shard_entries = sorted(shards, key=lambda entry: entry["shard"])
        duplicate = errors_by_stage.get(DUPLICATE_STAGE, 0)
        indexed = sum(entry["items"] for entry in shard_entries)
        reused = sum(entry["reused"] for entry in shard_entries)
        counts = {"input": input_count,
                  "indexed": indexed,
                  "failed": sum(errors_by_stage.values()) - duplicate,
                  "duplicate": duplicate,
                  "failed_by_stage": {stage: count for stage, count in sorted(errors_by_stage.items())
                                      if stage != DUPLICATE_STAGE},
                  # indexed = reused (carried forward from the previous version) + embedded
                  "reused": reused, "embedded": indexed - reused,
                  # against the previous published version, item by item (changes/)
                  "added": sum(entry["added"] for entry in shard_entries),
                  "removed": sum(entry["removed"] for entry in shard_entries),
                  "changed": sum(entry["image_changed"] + entry["metadata_changed"]
                                 for entry in shard_entries),
                  # unchanged items whose vector is another: the index space changed
                  "vector_changed": sum(entry.get("vector_changed", 0)
                                        for entry in shard_entries)}
        problems = []
        if counts["input"] != counts["indexed"] + counts["failed"] + counts["duplicate"]:
            problems.append(f"counts do not add up: input {counts['input']} != indexed "
                            f"{counts['indexed']} + failed {counts['failed']} + duplicate "
                            f"{counts['duplicate']}")
        if [entry["shard"] for entry in shard_entries] != list(range(num_shards)):
            problems.append(f"{len(shard_entries)} shards written, expected {num_shards}")
        if counts["indexed"] == 0:
            problems.append("no item was indexed")
        quality = quality_figures(shard_entries, counts, build.get("previous"),
                                  build.get("label_column"))
        previous = build.get("previous")
        space = index_space(build["model"]["fingerprint"], (projection or {}).get("sha256"))
        space_change = {"id": space, "previous": previous and previous["space"],
                        "changed": bool(previous) and previous["space"] != space}
        gate = quality_gate(quality, build["gate"], build["model"], previous, space_change)
        problems.extend(check["message"] for check in gate if not check["passed"])
        finished = datetime.datetime.now(datetime.timezone.utc)
        started = datetime.datetime.fromisoformat(build["started_at"])
        yield {
            "schema_version": SCHEMA_VERSION,
            "version_id": build["version_id"],
            "created_at": finished.isoformat(timespec="seconds"),
            "source": build["source"],
            "model": {**build["model"], "runtime": runtime},  # what the workers ran
            "index": {"library": "annoy", "library_version": package_metadata.version("annoy"),
                      "metric": ANNOY_METRIC, "seed": build["index"]["seed"],
                      "num_shards": num_shards,
                      # the Annoy files' width: the projection's, or the model's
                      "dimension": projection["dims"] if projection else
                      build["model"]["embedding_dim"],
                      # the space the vectors are in (schema.index_space), and whether it
                      # is another than the previous published version's (None: none)
                      "space": space,
                      "space_changed": space_change["changed"] if previous else None,
                      "n_trees": max((entry["n_trees"] for entry in shard_entries), default=0),
                      "search_k": max((entry["search_k"] for entry in shard_entries), default=0),
                      "recall_target": build["gate"]["min_recall"],
                      "shards": [{key: entry[key] for key in SHARD_KEYS}
                                 for entry in shard_entries]},
            "text_index": text_index,
            "projection": projection,
            "query_model": query_model,
            "reuse": build["reuse"],
            "counts": counts,
            "quality": quality,
            "validation": {"passed": not problems, "problems": problems, "gate": gate},
            "timings": {"started_at": build["started_at"],
                        "validated_at": finished.isoformat(timespec="seconds"),
                        "seconds": round((finished - started).total_seconds(), 3)},
            "pipeline_options": build["options"],
        }


SHARD_KEYS = ("shard", "index_file", "metadata_file", "embeddings_file", "changes_file",
              "items", "bytes", "sha256", "metadata_sha256", "changes_sha256", "n_trees",
              "search_k", "recall_at_10", "recall_queries")

# The index space must rank: for at least this share of the sample queries, the nearest items
# stand out from a typical item (catalog_index.ann.RANK_MARGIN). A real catalog's space
# ranks every query; one that collapses the vectors ranks none, or half (one direction).
MIN_RANKED_SHARE = 0.9
# A projected index must keep at least this share of each item's 10 nearest in the model's
# space (catalog_index.ann.neighbours_kept). Measured on 2,000 Fashion-MNIST products: the
# default PCA 256 + LDA 0.71, PCA alone 0.85, LDA weighted 0.9 0.44, a random 256-d
# projection 0.72; PCA 2 0.03, a projection onto directions the catalog does not vary in
# 0.008 (its vectors are rounding noise, which still "ranks").
MIN_NEIGHBOURS_KEPT = 0.1


def quality_figures(shard_entries, counts, previous, label_column=None) -> dict:
    queries = sum(entry["recall_queries"] for entry in shard_entries)
    recall = (sum(entry["recall_at_10"] * entry["recall_queries"] for entry in shard_entries)
              / queries) if queries else 1.0
    figures = {"ann_recall_at_10": round(recall, 6), "recall_queries": queries,
               "failure_rate": round(counts["failed"] / counts["input"], 6)
               if counts["input"] else 0.0}
    judged = sum(entry.get("rank_judged", 0) for entry in shard_entries)
    figures.update(rank_queries=judged, ranked_share=round(
        sum(entry.get("ranked", 0) for entry in shard_entries) / judged, 6) if judged else None)
    judged = sum(entry.get("neighbours_judged", 0) for entry in shard_entries)
    if judged:  # a projected index: how much of the model's neighbourhoods it keeps
        figures["neighbours_kept"] = round(
            sum(entry["neighbours_kept"] for entry in shard_entries) / judged, 6)
    judged = sum(entry["label_judged"] for entry in shard_entries)
    figures["label_column"] = label_column
    if judged:
        # leave-one-out, within each shard: how many of a labelled item's 10 nearest that
        # have a label share its label
        figures.update(label_queries=sum(entry["label_queries"] for entry in shard_entries),
                       label_p_at_10=round(sum(entry["label_hits"] for entry in shard_entries)
                                           / judged, 6))
    else:
        figures.update(label_p_at_10=None, label_not_measured=(
            f"no two items of a shard have a {label_column} label" if label_column else
            "the catalog has no label column (--label-column; by default category)"))
    if previous:
        figures["previous_version"] = previous["version_id"]
        figures["indexed_change"] = round(
            (counts["indexed"] - previous["indexed"]) / previous["indexed"], 6) \
            if previous["indexed"] else 0.0
    return figures


def _check(name, value, threshold, passed, said_if_passed, said_if_failed) -> dict:
    return {"check": name, "value": value, "threshold": threshold, "passed": bool(passed),
            "message": said_if_passed if passed else said_if_failed}


def quality_gate(quality: dict, thresholds: dict, model: dict, previous,
                 space: Optional[dict] = None) -> list:
    """Each check: name, measured value, threshold, passed, and a sentence for people that
    says what was found (the same sentence a failure reports). ``space``: the index space
    (:func:`index_space`) and whether it changed since the published version."""
    recall, queries = quality["ann_recall_at_10"], quality["recall_queries"]
    checks = [
        _check("ann_recall_at_10", recall, thresholds["min_recall"],
               recall >= thresholds["min_recall"],
               f"Annoy recall@10 {recall:.3f} reaches the {thresholds['min_recall']:.3f} "
               f"target ({queries:,} queries)",
               f"Annoy recall@10 {recall:.3f} is below the {thresholds['min_recall']:.3f} "
               f"target ({queries:,} queries)"),
        _check("failure_rate", quality["failure_rate"], thresholds["max_failure_rate"],
               quality["failure_rate"] <= thresholds["max_failure_rate"],
               f"{quality['failure_rate']:.1%} of the input failed, within the "
               f"{thresholds['max_failure_rate']:.1%} allowed",
               f"{quality['failure_rate']:.1%} of the input failed, more than the "
               f"{thresholds['max_failure_rate']:.1%} allowed (see errors/)"),
    ]
    ranked, judged = quality.get("ranked_share"), quality.get("rank_queries", 0)
    if ranked is not None:
        checks.append(_check(
            "space_ranks", ranked, MIN_RANKED_SHARE, ranked >= MIN_RANKED_SHARE,
            f"the nearest items stand out from a typical item for {ranked:.1%} of "
            f"{judged:,} sample queries",
            f"the index space cannot rank: the nearest items stand out from a typical item "
            f"for only {ranked:.1%} of {judged:,} sample queries (at least "
            f"{MIN_RANKED_SHARE:.0%} needed); a projection that collapses the vectors does "
            "this"))
    kept = quality.get("neighbours_kept")
    if kept is not None:
        checks.append(_check(
            "neighbours_kept", kept, MIN_NEIGHBOURS_KEPT, kept >= MIN_NEIGHBOURS_KEPT,
            f"the projection keeps {kept:.1%} of each item's 10 nearest in the model's space",
            f"the projection keeps only {kept:.1%} of each item's 10 nearest in the model's "
            f"space (at least {MIN_NEIGHBOURS_KEPT:.0%} needed): its space does not follow "
            "the catalog's images"))
    checks.extend(_label_precision_checks(quality, thresholds, previous))
    if previous:
        change = quality["indexed_change"]
        checks.append(_check(
            "indexed_change", change, -thresholds["max_count_drop"],
            change >= -thresholds["max_count_drop"],
            f"{change:+.1%} items indexed against version {previous['version_id']} "
            f"({previous['indexed']:,}), within the {thresholds['max_count_drop']:.0%} drop "
            "allowed",
            f"{-change:.1%} fewer items indexed than version {previous['version_id']} "
            f"({previous['indexed']:,}), more than the {thresholds['max_count_drop']:.0%} "
            "drop allowed"))
        same_model = (model["fingerprint"], model["embedding_dim"]) == (
            previous["model_fingerprint"], previous["embedding_dim"])
        checks.append(_check(
            "model_unchanged", same_model, True, same_model or thresholds["allow_model_change"],
            f"the model is the one version {previous['version_id']} was built with"
            if same_model else f"the model changed since version {previous['version_id']}, "
            "as --allow-model-change allows",
            f"the model changed since version {previous['version_id']} "
            f"({previous['model_fingerprint'][:12]}, {previous['embedding_dim']}-d -> "
            f"{model['fingerprint'][:12]}, {model['embedding_dim']}-d); pass "
            "--allow-model-change if that is intended"))
    if space and space.get("previous"):
        changed = space["changed"]
        checks.append(_check(
            "index_space", changed, None, True,
            f"the index space changed since version {previous['version_id']} "
            f"({space['previous']} -> {space['id']}): every item's vector is new, "
            "changes/ lists each as vector_changed" if changed else
            f"the index space is version {previous['version_id']}'s", ""))
    return checks


def _label_precision_checks(quality: dict, thresholds: dict, previous) -> list:
    """P@10 of the label column against the published version's. A night that cannot
    measure it on the labels the published version was checked on (the column is gone,
    empty, or another one) has lost what was measured: a drop to 0."""
    before = (previous or {}).get("quality") or {}
    measured, column = quality.get("label_p_at_10"), quality.get("label_column")
    allowed = thresholds["max_precision_drop"]
    if before.get("label_p_at_10") is None:
        if measured is None:
            return [_check("label_precision", None, None, True,
                           "label precision not measured: "
                           + quality.get("label_not_measured", "no label column"),
                           "")]
        # the figure is not a change: the value column (a change) stays empty
        return [_check("label_precision", None, None, True,
                       f"P@10 of the {column} labels is {measured:.3f} (nothing measured "
                       "before to compare with)", "")]
    was, was_column = before["label_p_at_10"], before.get("label_column")
    if measured is None or column != was_column:
        why = quality.get("label_not_measured") if measured is None else \
            f"it was measured on {column}, not {was_column}"
        return [_check(
            "label_precision", -was, -allowed, -was >= -allowed,
            f"P@10 of the {was_column} labels cannot be measured ({why}); version "
            f"{previous['version_id']} had {was:.3f}, a drop the "
            f"{allowed:.2f} allowed takes",
            f"P@10 of the {was_column} labels cannot be measured ({why}); version "
            f"{previous['version_id']} had {was:.3f}: a lost label column is a drop like "
            "any other; pass --max-precision-drop 1 if that is intended")]
    fell = round(measured - was, 6)
    return [_check(
        "label_precision", fell, -allowed, fell >= -allowed,
        f"P@10 of the {column} labels is {measured:.3f}, against {was:.3f} (version "
        f"{previous['version_id']}), within the {allowed:.2f} drop allowed",
        f"P@10 of the {column} labels fell from {was:.3f} (version {previous['version_id']}) "
        f"to {measured:.3f}, more than the {allowed:.2f} allowed; pass --max-precision-drop "
        "if that is intended")]


class Validate(beam.PTransform):
    """Shard summaries + counts -> a one-element PCollection holding the manifest dict."""

    def __init__(self, build: dict, num_shards, input_count, errors, errors_written,
                 text_index, runtime, projection, query_model):
        super().__init__()
        self.projection = projection  # one element: its manifest entry, or None
        self.query_model = query_model  # one element: its manifest entry, or None
        self.runtime = runtime  # one element: the model runtime a worker resolved
        self.build = build
        self.num_shards, self.input_count = num_shards, input_count
        self.errors, self.errors_written = errors, errors_written
        self.text_index = text_index

    def expand(self, shard_summaries):
        errors_by_stage = count_errors_by_stage(self.errors)
        return (shard_summaries.pipeline
                | "Once" >> beam.Create([None])
                | "ValidateVersion" >> beam.ParDo(
                    _ValidateVersion(self.build),
                    beam.pvalue.AsList(shard_summaries),
                    beam.pvalue.AsSingleton(self.num_shards),
                    beam.pvalue.AsSingleton(self.input_count),
                    beam.pvalue.AsSingleton(errors_by_stage),
                    beam.pvalue.AsList(self.errors_written),
                    beam.pvalue.AsSingleton(self.text_index),
                    beam.pvalue.AsSingleton(self.runtime),
                    beam.pvalue.AsSingleton(self.projection),
                    beam.pvalue.AsSingleton(self.query_model)))
