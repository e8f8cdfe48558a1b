"""``catalog-index serve``: the HTTP JSON API and search page over a published index; a thin layer over :class:`search.PublishedIndex`."""
