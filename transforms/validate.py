"""Validate: check the written version against what the pipeline counted, run the quality
gate, and assemble the manifest. Nothing is read back here: the Report stage opens the
version through the search side's reader, which checks every shard's sha256 and item count
against this manifest before anything is published. Nothing is published here either;
:mod:`transforms.publish` acts on the verdict."""

from __future__ import annotations

import datetime
from importlib import metadata as package_metadata

import apache_beam as beam

from catalog_index.schema import ANNOY_METRIC, DUPLICATE_STAGE, SCHEMA_VERSION


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
        gate = quality_gate(quality, build["gate"], build["model"], build.get("previous"))
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


def quality_figures(shard_entries, counts, previous, label_column=None) -> dict:
    queries = sum(entry["recall_queries"] for entry in shard_entries)
    recall = (sum(entry["recall_at_10"] * entry["recall_queries"] for entry in shard_entries)
              / queries) if queries else 1.0
    figures = {"ann_recall_at_10": round(recall, 6), "recall_queries": queries,
               "failure_rate": round(counts["failed"] / counts["input"], 6)
               if counts["input"] else 0.0}
    judged = sum(entry["label_judged"] for entry in shard_entries)
    if judged:
        # leave-one-out, within each shard: how many of a labelled item's 10 nearest that
        # have a label share its label
        figures.update(label_column=label_column,
                       label_queries=sum(entry["label_queries"] for entry in shard_entries),
                       label_p_at_10=round(sum(entry["label_hits"] for entry in shard_entries)
                                           / judged, 6))
    if previous:
        figures["previous_version"] = previous["version_id"]
        figures["indexed_change"] = round(
            (counts["indexed"] - previous["indexed"]) / previous["indexed"], 6) \
            if previous["indexed"] else 0.0
    return figures


def quality_gate(quality: dict, thresholds: dict, model: dict, previous) -> list:
    """Each check: name, measured value, threshold, passed, and a sentence for people."""
    def check(name, value, threshold, passed, message):
        return {"check": name, "value": value, "threshold": threshold, "passed": bool(passed),
                "message": message}

    checks = [
        check("ann_recall_at_10", quality["ann_recall_at_10"], thresholds["min_recall"],
              quality["ann_recall_at_10"] >= thresholds["min_recall"],
              f"Annoy recall@10 {quality['ann_recall_at_10']:.3f} is below the "
              f"{thresholds['min_recall']:.3f} target ({quality['recall_queries']} queries)"),
        check("failure_rate", quality["failure_rate"], thresholds["max_failure_rate"],
              quality["failure_rate"] <= thresholds["max_failure_rate"],
              f"{quality['failure_rate']:.1%} of the input failed, more than the "
              f"{thresholds['max_failure_rate']:.1%} allowed (see errors/)"),
    ]
    if previous:
        change = quality["indexed_change"]
        checks.append(check(
            "indexed_change", change, -thresholds["max_count_drop"],
            change >= -thresholds["max_count_drop"],
            f"{-change:.1%} fewer items indexed than version {previous['version_id']} "
            f"({previous['indexed']}), more than the {thresholds['max_count_drop']:.0%} "
            "drop allowed"))
        before = previous.get("quality") or {}
        if "label_p_at_10" in quality and before.get("label_p_at_10") is not None and \
                before.get("label_column") == quality["label_column"]:
            fell = round(quality["label_p_at_10"] - before["label_p_at_10"], 6)
            checks.append(check(
                "label_precision", fell, -thresholds["max_precision_drop"],
                fell >= -thresholds["max_precision_drop"],
                f"P@10 of the {quality['label_column']} labels fell from "
                f"{before['label_p_at_10']:.3f} (version {previous['version_id']}) to "
                f"{quality['label_p_at_10']:.3f}, more than the "
                f"{thresholds['max_precision_drop']:.2f} allowed; pass --max-precision-drop "
                "if that is intended"))
        same_model = (model["fingerprint"], model["embedding_dim"]) == (
            previous["model_fingerprint"], previous["embedding_dim"])
        checks.append(check(
            "model_unchanged", same_model, True, same_model or thresholds["allow_model_change"],
            f"the model changed since version {previous['version_id']} "
            f"({previous['model_fingerprint'][:12]}, {previous['embedding_dim']}-d -> "
            f"{model['fingerprint'][:12]}, {model['embedding_dim']}-d); pass "
            "--allow-model-change if that is intended"))
    return checks


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
