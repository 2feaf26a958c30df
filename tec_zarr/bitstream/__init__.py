"""The bytes on disk: the TEC chunk bitstream (:mod:`.chunk`), its payload sections (:mod:`.payload`) and the
``.tec`` raster file layout (:mod:`.tecfile`). ``FORMAT.md`` beside them specifies every byte in one place.

Nothing here runs a network or an entropy coder: these modules frame, parse and check bytes.
"""
