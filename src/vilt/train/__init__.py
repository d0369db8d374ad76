"""Training and evaluation of ViLT, by phase.

Install with the ``train`` extra (``pip install vilt[train]``). Modules, in the order a run uses them:

* :mod:`~vilt.train.settings`: :class:`~vilt.train.settings.TrainArgs` (every option, config files) and
  the data source saved with a model;
* :mod:`~vilt.train.data` reads the dataset formats; :mod:`~vilt.train.datasets` assembles the splits,
  the validation hold-out, the answer vocabulary and the datasets;
* :mod:`~vilt.train.models` and :mod:`~vilt.train.optimization`: the model, processor, optimizer and
  learning-rate schedule; :mod:`~vilt.train.objectives`: the inputs of each task's loss;
* :mod:`~vilt.train.loop`: :func:`~vilt.train.loop.train`, the loop (what ``vilt train`` runs);
* :mod:`~vilt.train.checkpoints`: the resumable state (data, not code) and the best model;
* :mod:`~vilt.train.evaluation`: metrics over a split, and :func:`~vilt.train.evaluation.evaluate`
  (what ``vilt evaluate`` runs); :mod:`~vilt.train.metrics`: the metric functions;
* :mod:`~vilt.train.distributed`, :mod:`~vilt.train.interrupts`, :mod:`~vilt.train.logs`: torchrun,
  Ctrl-C / SIGTERM, and the logs;
* :mod:`~vilt.train.cli`: the ``vilt train`` and ``vilt evaluate`` commands.
"""
