"""Resumable jobs as classes: :class:`~middleware.resumable.checkpointed_actor.CheckpointedActor`,
the framework-owned loop over a job's items on top of ``middleware.checkpoints``.

Imports the middleware (the package's top level) and the layers below them
(``tests/unit/test_import_layers.py``).
"""
