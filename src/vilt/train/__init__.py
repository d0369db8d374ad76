"""Training and evaluation of ViLT: dataset readers, objectives, metrics, one training loop and the CLI.

Install with the ``train`` extra (``pip install vilt[train]``). Entry points:

* :func:`vilt.train.loop.train` and :func:`vilt.train.loop.evaluate` (what ``vilt train`` and
  ``vilt evaluate`` run), configured by :class:`vilt.train.loop.TrainArgs`;
* :mod:`vilt.train.data` for the dataset readers, :mod:`vilt.train.objectives` for the losses and
  :mod:`vilt.train.metrics` for the metrics.
"""
