"""Label Studio, live: balseg's queries as tasks of a running Label Studio, answers back by
its API (docs/labelstudio.md).

- ``client``: the HTTP client (plain httpx): token kinds, one-line errors for an
  unreachable server or a refused token.
- ``tasks``: what Label Studio is shown: the labeling config, one task per queried pixel,
  reading an annotation back, Label Studio's brush RLE.
- ``sync``: the oracle (``oracle.kind: labelstudio``) and ``balseg sync``: upload, pull,
  the re-annotation rule, the bookkeeping tables in ``labels.sqlite``.
- ``backend``: ``balseg labelstudio-backend``, Label Studio's ML-backend protocol.
- ``cli``: the two commands.

Nothing here imports torch at module level: only ``/predict`` loads the model.
"""
