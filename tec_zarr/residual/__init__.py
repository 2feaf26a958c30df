"""Error-bounded and lossless coding: ``max_error`` chunks are a learned base plus a coded residual.

:mod:`.bound` quantizes the residual to the bound and picks a coder; :mod:`.hierarchical` (coder 2, context-modelled
passes) and :mod:`.tiled` (coder 1, memoryless tiles) code it with the integer tables of :mod:`.tables`.
"""
