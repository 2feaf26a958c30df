"""Exact integer networks: the layers (:mod:`.layers`) and the integer synthesis transform (:mod:`.synthesis`)
that every machine computes bit for bit."""
