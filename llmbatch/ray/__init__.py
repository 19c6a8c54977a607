"""``--engine ray``: one batch over a Ray cluster. The driver (engine.py) feeds worker
actors (actors.py) through wire.py and folds their part directories (parts.py) into one
run directory; lease.py holds the cluster's one rate budget. Ray is imported only here."""
