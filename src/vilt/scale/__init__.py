"""Inference beyond one machine, on Ray (``pip install 'vilt[scale]'``); see docs/scale.md.

* :mod:`.batch`: ``vilt batch vqa|nlvr2|fill-mask``: a table answered on Ray Data (CPU tasks decode and
  tokenize, an actor pool of model replicas runs the batches), written as committed part files, resumable.
* :mod:`.ranking`: ``vilt batch rank``: every text against every image of a corpus, exactly, in blocks
  of images x blocks of texts on Ray tasks, image tokens cached on disk; top-k and R@K.
* :mod:`.replicas`: ``vilt serve --replicas N``: the HTTP server's app as a Ray Serve deployment.
* :mod:`.parts` (committed part files) and :mod:`.cluster` (an embedded Ray, or a cluster's address).

Nothing here is imported by ``import vilt``; Ray is imported when a job starts.
"""
