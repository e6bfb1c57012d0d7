"""The DSP chain as a separate gRPC service (``parley dsp-serve``) and its client stage.

``dsp.proto`` is the contract; ``dsp_pb2*.py`` are generated from it (``make proto``).
``sessions`` holds the I/O-free per-session state, ``server`` the gRPC service, ``client``
the chain a call uses instead of the in-process one when ``PARLEY_DSP_URL`` is set.
"""
