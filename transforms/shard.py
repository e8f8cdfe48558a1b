"""AssignShard + GroupIntoShards: a stable hash of item_id picks the shard; inside a shard
items are sorted by item_id and numbered 0..n-1, which are their Annoy ids."""

from __future__ import annotations

import apache_beam as beam

from catalog_index.schema import shard_of


class _NumberItems(beam.DoFn):
    def process(self, keyed):
        shard, items = keyed
        ordered = sorted((item for item in items if item is not None),
                         key=lambda item: item["item_id"])
        yield shard, [{**item, "shard": shard, "annoy_id": annoy_id}
                      for annoy_id, item in enumerate(ordered)]


class GroupIntoShards(beam.PTransform):
    """items -> (shard, [items sorted by item_id, with shard and annoy_id]) for every shard,
    empty shards included, so the version always has ``num_shards`` of each file."""

    def __init__(self, num_shards: int):
        super().__init__()
        self.num_shards = num_shards

    def expand(self, items):
        num_shards = self.num_shards
        keyed = items | "AssignShard" >> beam.Map(
            lambda item: (shard_of(item["item_id"], num_shards), item))
        every_shard = (items.pipeline | "EveryShard" >> beam.Create(
            [(shard, None) for shard in range(num_shards)]))
        return ((keyed, every_shard)
                | "WithEmptyShards" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "NumberItems" >> beam.ParDo(_NumberItems()))
