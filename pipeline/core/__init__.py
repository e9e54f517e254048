"""The foundation: storage, errors, the output layout, records and keys, Beam options and
flags. It imports nothing else of openwit, and never torch."""
