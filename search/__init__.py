"""The search team's side: open a published version and query it. No Beam here."""

from search.index import Hit, IndexIntegrityError, ModelMismatchError, PublishedIndex

__all__ = ["Hit", "IndexIntegrityError", "ModelMismatchError", "PublishedIndex"]
