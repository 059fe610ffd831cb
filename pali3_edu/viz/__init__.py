"""Plots (matplotlib) and explorers (ipywidgets) for the lessons, one module per topic:
``viz.data`` (ShapesWorld), ``viz.vision`` (patches, position embeddings), ``viz.siglip``
(similarity matrices, retrieval browser), ``viz.text`` (denoisers), ``viz.encdec`` (relative
position buckets, attention masks)."""
